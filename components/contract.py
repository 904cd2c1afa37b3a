"""The stage contract (docs/contract.md): `onerec run <stage> --date D` semantics, shared by every stage.

1. resolve config; refuse a date whose upstream stages have no `_SUCCESS` (exit 2);
2. key = (input digests of upstream outputs + external inputs, hash of the stage's config sections);
   a finished directory with the same key is a no-op, unless --force;
3. otherwise reset the directory, run the stage inside its MLflow run, write outputs, then
   manifest.json, then _SUCCESS.
Stage functions are `run(ctx) -> metrics`; an optional `external_inputs(ctx) -> {name: digest}` in
the same module declares inputs that live outside the store (source files, earlier days).
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import importlib
import json
import os
import signal
import time

from components import registry
from onerec.config import resolved, section_hash
from onerec.errors import BadInput
from onerec.store import StageDir, Store, open_store, sha256


@dataclasses.dataclass
class StageContext:
    stage: registry.Stage
    pipeline: str
    date: str
    config: dict          # the full resolved config
    store: Store
    out: StageDir         # where this stage writes
    mlflow_run_id: str | None = None
    job_key: str = ""     # digest of (inputs, config): names this exact computation, e.g. for checkpoints

    def scratch(self, name: str) -> str:
        """Store prefix for state that must outlive a crash (checkpoints) but belongs to this job only.
        It sits outside the stage directory, which is reset before every (re)run."""
        return f"_scratch/{self.pipeline}/{self.date}/{self.stage.name}/{self.job_key}/{name}"

    def dir(self, stage: str, date: str | None = None) -> StageDir:
        return StageDir(self.store, self.pipeline, date or self.date, stage)

    def earlier_done(self, stages, days: int):
        """Finished stage directories of the `days` dates before this one, newest date first (and, within a
        date, in the order of `stages`): how a stage finds yesterday's model, state or history."""
        stages = (stages,) if isinstance(stages, str) else tuple(stages)
        d = dt.date.fromisoformat(self.date)
        for i in range(1, int(days) + 1):
            for stage in stages:
                prev = self.dir(stage, (d - dt.timedelta(days=i)).isoformat())
                if prev.is_done():
                    yield prev

    def upstream(self, stage: str) -> StageDir:
        d = self.dir(stage)
        if not d.is_done():
            raise BadInput(f"{stage} for {self.date} has no _SUCCESS at {d.uri()}; run it first")
        return d

    def save_figure(self, name: str, fig, folder: str = "") -> None:
        """A matplotlib figure as `name` (PNG) in this stage's outputs and in its MLflow run."""
        import io

        import mlflow

        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=90)
        self.out.write_bytes(name, buf.getvalue())
        mlflow.log_figure(fig, f"{folder or self.stage.name}/{name}")

    @property
    def section(self) -> dict:
        """This stage's own config section (e.g. config['validate'])."""
        return self.config.get(self.stage.name) or {}


@dataclasses.dataclass
class Result:
    stage: str
    date: str
    status: str           # "done" | "skipped" (no-op)
    manifest: dict


def check_date(date: str) -> str:
    try:
        return dt.date.fromisoformat(date).isoformat()
    except (TypeError, ValueError):
        raise BadInput(f"bad --date {date!r}: expected YYYY-MM-DD") from None


def fault(stage: str, point: str) -> None:
    """Test seam for crash-safety tests: ONEREC_FAULT=<stage>:<point>:<kill|raise>."""
    spec = os.environ.get("ONEREC_FAULT", "")
    if spec.count(":") == 2:
        s, p, action = spec.split(":")
        if s == stage and p == point:
            if action == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise RuntimeError(f"injected fault at {stage}:{point}")


def _load(entrypoint: str):
    module, fn = entrypoint.split(":")
    mod = importlib.import_module(module)
    return getattr(mod, fn), getattr(mod, "external_inputs", None)


def run_stage(name: str, date: str, config: dict, *, force: bool = False) -> Result:
    from onerec import tracking

    stage = registry.get(name)
    date = check_date(date)
    cfg = resolved(config)
    pipeline = cfg["pipeline"]
    if pipeline not in stage.pipelines:
        raise BadInput(f"stage {name!r} is not part of pipeline {pipeline!r}")
    store = open_store(cfg["store"]["root"])
    ctx = StageContext(stage, pipeline, date, cfg, store, StageDir(store, pipeline, date, name))
    fn, external = _load(stage.entrypoint)

    inputs = {up: ctx.upstream(up).digest() for up in stage.upstream}
    if external:
        inputs.update({f"external:{k}": v for k, v in external(ctx).items()})
    config_hash = section_hash(cfg, stage.config_keys)
    ctx.job_key = sha256(json.dumps([inputs, config_hash], sort_keys=True).encode())[:16]

    out = ctx.out
    if out.is_done() and not force:
        old = out.manifest()
        if old.get("input_digests") == inputs and old.get("config_hash") == config_hash:
            return Result(name, date, "skipped", old)
    # A finished directory being recomputed gets a fresh MLflow run; a half-done one is a retry.
    fresh = out.is_done()
    out.reset()
    fault(name, "start")
    started = time.time()
    with tracking.stage_run(cfg["mlflow"]["tracking_uri"], cfg["mlflow"]["experiment"], pipeline, date, name,
                            fresh=fresh, artifact_location=cfg["mlflow"].get("artifact_location")) as run:
        import mlflow

        ctx.mlflow_run_id = run.info.run_id
        mlflow.log_params({f"{k}": str(v)[:500] for k, v in _flatten({k: cfg.get(k) for k in stage.config_keys}).items()})
        mlflow.set_tags({"onerec.config_hash": config_hash, **{f"onerec.input.{k}": v[:16] for k, v in inputs.items()}})
        metrics = fn(ctx) or {}
        fault(name, "before_commit")
        manifest = {
            "pipeline": pipeline, "date": date, "stage": name,
            "input_digests": inputs, "config_hash": config_hash,
            "config": {k: cfg.get(k) for k in stage.config_keys},
            "code_version": tracking.code_version(),
            "metrics": metrics, "mlflow_run_id": run.info.run_id,
            "started_at": dt.datetime.fromtimestamp(started, dt.timezone.utc).isoformat(),
            "duration_s": round(time.time() - started, 3),
        }
        numeric = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if numeric:
            mlflow.log_metrics(numeric)
        mlflow.log_metric("duration_s", manifest["duration_s"])
        out.commit(manifest)
        mlflow.set_tag(tracking.TAG_OUTPUT_DIGEST, out.digest())   # lineage: which run made these outputs
    return Result(name, date, "done", out.manifest())


def _flatten(d: dict, prefix: str = "") -> dict:
    flat = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            flat.update(_flatten(v, key + "."))
        else:
            flat[key] = v
    return flat
