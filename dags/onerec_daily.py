"""Airflow 3 DAGs generated from the stage registry: `onerec_daily` and `onerec_bootstrap`.

Every task runs the stage contract as a subprocess,
`python -m components.cli run <stage> --date D [--config F] [--set k=v ...]`,
exactly what the stage image's ENTRYPOINT runs under KubernetesPodOperator. Exit codes map to
Airflow states: 0 success; 2 (bad data / bad request) fails without retry; 3 (gate not passed)
skips the task and, through the default trigger rule, everything downstream; anything else is
retried with exponential backoff.

Partition date D, first match wins:
  1. params.date (trigger form, `dag.test(run_conf={"date": ...})`, `airflow dags trigger -c`);
  2. the run's logical date (= the data interval start for scheduled runs: a run for day D fires
     at midnight after D), or its data interval start;
  3. neither (an Airflow 3 manual run without logical date): the task fails, asking for params.date.

This file must parse in well under a second: it imports only the registry, never torch, mlflow
or the stages themselves (those load in the stage subprocess).
"""
from __future__ import annotations

import datetime as dt
import logging
import os
import signal
import sys
from pathlib import Path

from airflow.sdk import CronDataIntervalTimetable, Param, dag, get_current_context, task

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # DAGS_FOLDER is <repo>/dags; the registry lives in <repo>/components
    sys.path.insert(0, str(REPO))

from components.registry import Stage, stages_for  # noqa: E402

log = logging.getLogger("onerec.dags")

START_DATE = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
DEFAULT_TIMEOUT_S = 6 * 3600


def partition_date(context) -> str:
    """The YYYY-MM-DD partition this run processes (see the module docstring)."""
    if date := (context.get("params") or {}).get("date"):
        return str(date)
    when = context.get("logical_date") or context.get("data_interval_start")
    if when is None:
        from airflow.sdk.exceptions import AirflowFailException

        raise AirflowFailException(
            "this run has no logical date, so the partition date is unknown: "
            "trigger it with params.date=YYYY-MM-DD (conf {\"date\": \"2026-01-02\"})")
    return when.date().isoformat()


def config_args(params: dict, pipeline: str) -> list[str]:
    """--config / --set passthrough; the DAG's own pipeline always wins."""
    args = []
    if config := params.get("config") or os.environ.get("ONEREC_CONFIG"):
        args += ["--config", str(config)]
    for item in [*(params.get("set") or []), f"pipeline={pipeline}"]:
        args += ["--set", str(item)]
    return args


def notify_failure(context) -> None:
    """on_failure_callback: calls ONEREC_FAILURE_NOTIFIER="module:function" (gets the context),
    else logs one error line an alerting rule can match."""
    if target := os.environ.get("ONEREC_FAILURE_NOTIFIER"):
        import importlib

        module, _, fn = target.partition(":")
        getattr(importlib.import_module(module), fn)(context)
        return
    ti = context.get("ti") or context.get("task_instance")
    try:
        date = partition_date(context)
    except Exception:
        date = "?"
    log.error("onerec stage failed: dag=%s task=%s date=%s try=%s", getattr(ti, "dag_id", "?"),
              getattr(ti, "task_id", "?"), date, getattr(ti, "try_number", "?"))


def run_stage(stage: str, date: str, args: list[str]) -> None:
    """Run one stage as a subprocess, stream its output into the task log, map its exit code."""
    import subprocess

    from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

    cmd = [sys.executable, "-m", "components.cli", "run", stage, "--date", date, *args]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "PYTHONUNBUFFERED": "1"}
    log.info("running %s", " ".join(cmd))
    last = ""
    # own session: on timeout or kill, the whole stage goes (Spark's JVM, torchrun workers) too
    with subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, bufsize=1, start_new_session=True) as proc:
        try:
            for line in proc.stdout:
                log.info("%s", line.rstrip())
                last = line.strip() or last
            code = proc.wait()
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    if code == 2:
        raise AirflowFailException(f"{stage} {date}: bad data or request, not retried: {last}")
    if code == 3:
        raise AirflowSkipException(f"{stage} {date}: gate not passed, downstream skipped: {last}")
    if code != 0:
        raise RuntimeError(f"{stage} {date} exited with {code} (retryable): {last}")


def stage_task(stage: Stage, pipeline: str):
    timeout = dt.timedelta(seconds=float(stage.resources.get("timeout_s", DEFAULT_TIMEOUT_S)))

    @task(task_id=stage.name, retries=stage.retries, retry_delay=dt.timedelta(minutes=1),
          retry_exponential_backoff=2.0, max_retry_delay=dt.timedelta(minutes=30),
          execution_timeout=timeout, on_failure_callback=notify_failure, doc_md=stage.description)
    def _run() -> None:
        context = get_current_context()
        run_stage(stage.name, partition_date(context), config_args(context["params"], pipeline))

    return _run()


def build_dag(dag_id: str, pipeline: str, schedule, max_active_runs: int | None = None):
    stages = stages_for(pipeline)

    @dag(
        dag_id=dag_id,
        schedule=schedule,
        start_date=START_DATE,
        catchup=False,
        max_active_runs=max_active_runs or int(os.environ.get("ONEREC_MAX_ACTIVE_RUNS", "1")),
        tags=["onerec", pipeline],
        doc_md=f"OneRec `{pipeline}` pipeline, generated from components/registry.py: "
               + " -> ".join(s.name for s in stages),
        params={
            "date": Param(None, type=["null", "string"], pattern=r"^\d{4}-\d{2}-\d{2}$",
                          description="partition date YYYY-MM-DD; default: the run's logical date"),
            "config": Param(None, type=["null", "string"], description="preset YAML (default $ONEREC_CONFIG)"),
            "set": Param([], type="array", items={"type": "string"}, description="key=value overrides"),
        },
    )
    def pipeline_dag():
        tasks = {s.name: stage_task(s, pipeline) for s in stages}
        for s in stages:
            for up in s.upstream:
                if up in tasks:
                    tasks[up] >> tasks[s.name]

    return pipeline_dag()


# "@daily" alone means CronTriggerTimetable in Airflow 3, whose logical date is the run time (D+1);
# the data-interval timetable gives logical date = data interval start = the finished day D.
onerec_daily = build_dag("onerec_daily", "daily", CronDataIntervalTimetable("@daily", timezone="UTC"))
onerec_bootstrap = build_dag("onerec_bootstrap", "bootstrap", None)
