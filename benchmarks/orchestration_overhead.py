"""Orchestration overhead: the same date run directly and through Airflow (`dag.test()`).

  python benchmarks/orchestration_overhead.py [--n 3] [--date 2026-01-02] [--config configs/debug.yaml]

Modes, each on a fresh ONEREC_HOME per repetition:
  direct     `onerec pipeline run --start D --end D`: one process runs every stage (the baseline);
  per-stage  `onerec run <stage> --date D` for each stage in turn: one process per stage, as in
             Airflow and Kubeflow (each pays the stage imports: MLflow, Great Expectations, ...);
  airflow    `onerec_daily.test()` on a SQLite metadata DB in this (long-lived, warmed-up) process,
             each task running its stage as a subprocess.
Overhead = mean(mode) / mean(direct) - 1; the target for Airflow is <= 10%. "airflow vs per-stage"
is Airflow's own cost (scheduling loop, task runner, metadata DB), without the process-per-stage cost.
Writes benchmarks/results/orchestration_overhead.json and prints a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "orchestration_overhead.json"
TARGET = 0.10
sys.path.insert(0, str(REPO))


def cli(*args: str, home: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "components.cli", *args], cwd=REPO, capture_output=True,
                          text=True, env={**os.environ, "ONEREC_HOME": str(home)})
    if proc.returncode:
        raise SystemExit(f"onerec {' '.join(args)} -> {proc.returncode}\n{proc.stderr[-2000:]}")


def run_direct(date: str, cfg: list[str], home: Path) -> None:
    cli("pipeline", "run", "--start", date, "--end", date, *cfg, home=home)


def run_per_stage(date: str, cfg: list[str], home: Path) -> None:
    from components.registry import stages_for

    for stage in stages_for("daily"):
        cli("run", stage.name, "--date", date, *cfg, home=home)


def airflow_dag(workdir: Path):
    """Migrate a fresh SQLite metadata DB, then parse the DAG (Airflow reads its env on import)."""
    os.environ.update({"AIRFLOW_HOME": str(workdir / "airflow"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                       "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"), "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING"})
    subprocess.run([str(Path(sys.executable).with_name("airflow")), "db", "migrate"], check=True,
                   capture_output=True)
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(REPO / "dags")).dags["onerec_daily"]


def run_airflow(dag, date: str, config: str | None, home: Path) -> None:
    os.environ["ONEREC_HOME"] = str(home)  # the task subprocesses inherit it
    run = dag.test(logical_date=None, run_conf={"date": date, "config": config})
    if str(run.state) != "success":
        raise SystemExit(f"airflow run {run.run_id} ended {run.state}")


def timed(fn, *args) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=3, help="repetitions per mode")
    p.add_argument("--date", default="2026-01-02")
    p.add_argument("--config", default=str(REPO / "configs" / "debug.yaml"))
    p.add_argument("--no-warmup", action="store_true", help="also time Airflow's first (cold) run")
    args = p.parse_args(argv)
    cfg = ["--config", args.config] if args.config else []
    load_before = os.getloadavg()[0]

    with tempfile.TemporaryDirectory(prefix="onerec-bench-") as tmp:
        work = Path(tmp)
        homes = iter(work / f"home{i}" for i in range(10_000))
        dag = airflow_dag(work)
        if not args.no_warmup:  # a scheduler is a long-lived process: do not time its first start
            run_airflow(dag, args.date, args.config, next(homes))
        times: dict[str, list[float]] = {"direct": [], "per-stage": [], "airflow": []}
        for i in range(args.n):  # interleaved, so drift (thermal, caches) hits every mode alike
            times["direct"].append(timed(run_direct, args.date, cfg, next(homes)))
            times["per-stage"].append(timed(run_per_stage, args.date, cfg, next(homes)))
            times["airflow"].append(timed(run_airflow, dag, args.date, args.config, next(homes)))
            print(f"rep {i + 1}/{args.n}: " + ", ".join(f"{k} {v[-1]:.1f}s" for k, v in times.items()),
                  file=sys.stderr, flush=True)

    base = statistics.mean(times["direct"])
    rows = {k: {"runs": v, "mean_s": round(statistics.mean(v), 2), "min_s": round(min(v), 2),
                "overhead_vs_direct": round(statistics.mean(v) / base - 1, 4)} for k, v in times.items()}
    rows["airflow"]["overhead_vs_per_stage"] = round(
        statistics.mean(times["airflow"]) / statistics.mean(times["per-stage"]) - 1, 4)
    import airflow

    result = {
        "benchmark": "orchestration_overhead", "date": args.date, "config": args.config, "n": args.n,
        "warmup": not args.no_warmup, "target_overhead": TARGET,
        "target_met": rows["airflow"]["overhead_vs_direct"] <= TARGET, "modes": rows,
        "env": {"python": platform.python_version(), "airflow": airflow.__version__, "cpus": os.cpu_count(),
                "machine": platform.machine(),
                "loadavg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)]},  # > cpus: numbers are noise
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")

    print("| mode | runs | mean s | min s | overhead vs direct |\n|---|---|---|---|---|")
    for k, r in rows.items():
        print(f"| {k} | {len(r['runs'])} | {r['mean_s']:.1f} | {r['min_s']:.1f} | {r['overhead_vs_direct']:+.1%} |")
    print(f"\nAirflow vs per-stage (Airflow's own cost): {rows['airflow']['overhead_vs_per_stage']:+.1%}; "
          f"target <= {TARGET:.0%} vs direct: {'met' if result['target_met'] else 'NOT met'}. Wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
