"""MLflow lineage: one parent run per (pipeline, date), one nested run per stage.

Runs are found again by tags rather than remembered: a retried stage (Airflow retry, on-call
`onerec run` after a crash) reuses its unfinished run instead of creating a duplicate, while a real
recomputation of a finished stage (`--force`, changed inputs) gets a fresh run so history is kept.
"""
from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import warnings
from pathlib import Path

# MLflow reads its log level when first imported; its INFO lines (DB migrations) are noise in stage logs.
os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
logging.getLogger("alembic").setLevel(logging.WARNING)
warnings.filterwarnings("ignore", category=UserWarning, module=r"mlflow(\..*)?")

TAG_RUN_KEY = "onerec.run_key"
TAG_STAGE = "onerec.stage"
TAG_DATE = "onerec.date"
TAG_PIPELINE = "onerec.pipeline"
TAG_CODE = "onerec.code_version"
TAG_OUTPUT_DIGEST = "onerec.output_digest"     # the stage directory digest this run committed
TAG_ORCHESTRATOR_RUN = "onerec.orchestrator_run"   # e.g. airflow:<dag_id>/<run_id>, kfp:<job id>
TAG_JOB_KEY = "onerec.job_key"                  # digest of (input digests, config hash): one exact computation
TAG_EXIT_CODE = "onerec.exit_code"              # set on a failed attempt: 1 retryable, 2 bad data, 3 gate
TAG_ERROR = "onerec.error"                      # the failed attempt's one-line error


def code_version() -> str:
    """Image builds bake ONEREC_CODE_VERSION; a checkout reports its git commit; else the package version."""
    if v := os.environ.get("ONEREC_CODE_VERSION"):
        return v
    repo = Path(__file__).resolve().parents[1]
    if (repo / ".git").exists():
        try:
            out = subprocess.run(["git", "-C", str(repo), "describe", "--always", "--dirty", "--abbrev=12"],
                                 capture_output=True, text=True, timeout=5)
            if out.returncode == 0 and out.stdout.strip():
                return out.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("onerec")
    except PackageNotFoundError:
        return "unknown"


def _experiment(mlflow, name: str, artifact_location: str | None = None) -> str:
    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return mlflow.create_experiment(name, artifact_location=artifact_location)
    except Exception:  # another process created it first
        return mlflow.get_experiment_by_name(name).experiment_id


def _find(client, exp_id: str, tags: dict, parent_only: bool = False):
    flt = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    runs = client.search_runs([exp_id], filter_string=flt, order_by=["attributes.start_time DESC"], max_results=50)
    if parent_only:
        runs = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    return runs


@contextlib.contextmanager
def stage_run(tracking_uri: str, experiment: str, pipeline: str, date: str, stage: str, *, fresh: bool,
              artifact_location: str | None = None, job_key: str | None = None):
    """Context manager yielding the active nested MLflow run of this stage.

    fresh=False: reuse the newest unfinished run of this stage (a retry), but only one that was doing the
    same computation (`job_key`: inputs + config): after the on-call engineer fixed the input or the config,
    the rerun is a new attempt with its own run (and params), and the failed one stays in the history.
    fresh=True is decided by the caller when the stage is recomputed after a finished run.
    """
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient()
    exp_id = _experiment(mlflow, experiment, artifact_location)
    run_key = f"{pipeline}/{date}"
    base_tags = {TAG_RUN_KEY: run_key, TAG_DATE: date, TAG_PIPELINE: pipeline, TAG_CODE: code_version()}

    parents = _find(client, exp_id, {TAG_RUN_KEY: run_key, TAG_STAGE: "_pipeline"}, parent_only=True)
    if parents:
        parent_id = parents[0].info.run_id
    else:
        parent_id = client.create_run(exp_id, run_name=f"{pipeline} {date}",
                                      tags={**base_tags, TAG_STAGE: "_pipeline"}).info.run_id

    run_id = None
    if not fresh:
        same_job = {TAG_JOB_KEY: job_key} if job_key else {}
        previous = _find(client, exp_id, {TAG_RUN_KEY: run_key, TAG_STAGE: stage, **same_job})
        unfinished = [r for r in previous if r.info.status != "FINISHED"]
        run_id = unfinished[0].info.run_id if unfinished else None

    mlflow.set_experiment(experiment_id=exp_id)
    with mlflow.start_run(run_id=parent_id, log_system_metrics=False):
        with mlflow.start_run(run_id=run_id, run_name=None if run_id else f"{stage} {date}", nested=True,
                              tags=None if run_id else {**base_tags, TAG_STAGE: stage,
                                                        **({TAG_JOB_KEY: job_key} if job_key else {})}) as run:
            if orchestrator_run := os.environ.get("ONEREC_RUN_ID"):   # set by the DAG / pipeline task
                mlflow.set_tag(TAG_ORCHESTRATOR_RUN, orchestrator_run)
            yield run
    # Leaving the parent context ends it as FINISHED (or FAILED on error): the parent shows the
    # state of the date's latest stage instead of staying "RUNNING" between stages.
