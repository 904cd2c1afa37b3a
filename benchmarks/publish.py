"""What a benchmark leaves behind: `<out>.json`, `<out>.md` and `<out>.png` side by side, and the same table, figure
and headline metrics in one MLflow run (experiment onerec-benchmarks, SQLite under the benchmark's home)."""
from __future__ import annotations

import json
from pathlib import Path


def publish(out: str | Path, result: dict, table: str, fig, home: Path, params: dict,
            metrics: list[dict]) -> Path:
    """Write the files (the figure next to the JSON, whatever --out says) and log one MLflow run named after the
    file; `metrics` is one dict per step (step 0 first; an empty dict logs nothing). Returns the figure's path."""
    import mlflow

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    png = out.with_suffix(".png")
    fig.savefig(png, dpi=110)
    out.write_text(json.dumps({**result, "markdown": table}, indent=2, default=float))
    out.with_suffix(".md").write_text(table)
    mlflow.set_tracking_uri(f"sqlite:///{home / 'mlflow.db'}")
    mlflow.set_experiment("onerec-benchmarks")
    with mlflow.start_run(run_name=out.stem):
        mlflow.log_params(params)
        for step, m in enumerate(metrics):
            if m:
                mlflow.log_metrics(m, step=step)
        mlflow.log_figure(fig, png.name)
        mlflow.log_text(table, out.with_suffix(".md").name)
    return png
