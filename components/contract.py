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
    if not force:
        _refuse_same_failed_attempt(ctx)
    # A finished directory being recomputed gets a fresh MLflow run; a half-done one is a retry.
    fresh = out.is_done()
    out.reset()
    fault(name, "start")
    started = time.time()
    with tracking.stage_run(cfg["mlflow"]["tracking_uri"], cfg["mlflow"]["experiment"], pipeline, date, name,
                            fresh=fresh, artifact_location=cfg["mlflow"].get("artifact_location"),
                            job_key=ctx.job_key) as run:
        import mlflow

        ctx.mlflow_run_id = run.info.run_id
        mlflow.log_params({f"{k}": str(v)[:500] for k, v in _flatten({k: cfg.get(k) for k in stage.config_keys}).items()})
        mlflow.set_tags({"onerec.config_hash": config_hash, **{f"onerec.input.{k}": v[:16] for k, v in inputs.items()}})
        try:
            metrics = fn(ctx) or {}
        except BaseException as e:
            _record_failure(ctx, e)
            raise
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


def _attempt_key(ctx: StageContext) -> str | None:
    """Where a non-retryable failure of this stage under this orchestrator run is recorded (None: no run id)."""
    run_id = os.environ.get("ONEREC_RUN_ID")
    if not run_id:
        return None
    return f"_attempts/{ctx.pipeline}/{ctx.date}/{ctx.stage.name}/{sha256(run_id.encode())[:16]}.json"


def _record_failure(ctx: StageContext, e: BaseException) -> None:
    """Tag the failed MLflow run (exit code, one-line error) so lineage shows every attempt; under an
    orchestrator run id, also record a bad-data (2) or gate (3) failure for `_refuse_same_failed_attempt`."""
    import mlflow

    from onerec import tracking
    from onerec.errors import EXIT_BAD_INPUT, EXIT_GATE, EXIT_RETRYABLE, OneRecError

    code = getattr(e, "exit_code", EXIT_RETRYABLE) if isinstance(e, OneRecError) else EXIT_RETRYABLE
    line = (str(e).splitlines() or [type(e).__name__])[0][:500]
    try:
        mlflow.set_tags({tracking.TAG_EXIT_CODE: str(code), tracking.TAG_ERROR: line})
        if code in (EXIT_BAD_INPUT, EXIT_GATE) and (key := _attempt_key(ctx)):
            ctx.store.write_bytes(key, json.dumps({"exit_code": code, "error": line, "job_key": ctx.job_key,
                                                   "orchestrator_run": os.environ["ONEREC_RUN_ID"],
                                                   "mlflow_run_id": ctx.mlflow_run_id}).encode())
    except Exception:   # bookkeeping must never hide the stage's own error
        pass


def _refuse_same_failed_attempt(ctx: StageContext) -> None:
    """Fail fast when an orchestrator retries a non-retryable failure.

    Kubeflow Pipelines cannot make a retry depend on the exit code (its RetryPolicy has only a count and a
    backoff), so it retries exit 2 and 3 like any failure. A retry under the same orchestrator run id with the
    same job key (same inputs and config) would fail the same way: it exits with the recorded code at once,
    without recomputing. A changed input or config (the on-call fix) is a new computation and runs.
    """
    key = _attempt_key(ctx)
    if key is None or not ctx.store.exists(key):
        return
    failed = json.loads(ctx.store.read_bytes(key))
    if failed.get("job_key") != ctx.job_key:
        return
    from onerec.errors import GateFailed

    cls = GateFailed if failed.get("exit_code") == GateFailed.exit_code else BadInput
    raise cls(f"{ctx.stage.name} {ctx.date}: not retried: this orchestrator run already failed here with exit "
              f"{failed.get('exit_code')} on the same inputs and config ({failed.get('error')}); fix the input "
              f"or the config and rerun")


def _flatten(d: dict, prefix: str = "") -> dict:
    flat = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            flat.update(_flatten(v, key + "."))
        else:
            flat[key] = v
    return flat
