"""Airflow 3 DAGs generated from the stage registry: `onerec_daily` and `onerec_bootstrap`.

One task per registered stage, wired by its `upstream`; dags/onerec_tasks.py makes the tasks (local subprocess
or KubernetesPodOperator, ONEREC_TASK_MODE), maps exit codes to task states and resolves the partition date.
docs/orchestration.md is the runbook.

Runs: `params.until=<stage>` runs a prefix of the pipeline (later stages skip, like
`onerec pipeline run --until`). max_active_runs defaults to 1 (ONEREC_MAX_ACTIVE_RUNS): day D warm
starts from day D-1's model, so a backfill must run its dates in order. Dates never share an
artifact directory or an MLflow run, so independent dates may run in parallel (max_active_runs > 1)
when the pipeline has no day-to-day state (e.g. a backfill `--until features`). Every task has an
execution timeout (the registry's `timeout_s`), every run a deadline alert (ONEREC_DEADLINE_HOURS
after it was queued; 0 turns it off) that calls the same pluggable notifier as task failures.

This file must parse in well under a second: it imports only the registry and the task helpers, never torch,
mlflow or the stages themselves (those load in the stage subprocess).
"""
from __future__ import annotations

import datetime as dt
import os
import sys
from pathlib import Path

from airflow.sdk import CronDataIntervalTimetable, Param, dag

DAGS = Path(__file__).resolve().parent
for _path in (DAGS.parent, DAGS):   # <repo> holds components/; Airflow puts DAGS_FOLDER on sys.path, a test may not
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from components.registry import stages_for  # noqa: E402
from onerec_tasks import (config_args, deadline_alert, kubernetes_task, local_task, notify_failure,  # noqa: E402
                          partition_date, pod_exit_code, run_stage, skip_beyond_until, task_mode)

__all__ = ["build_dag", "config_args", "notify_failure", "partition_date", "pod_exit_code", "run_stage",
           "skip_beyond_until"]   # the helpers are re-exported: tests and operators reach them through the DAG file

START_DATE = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


def build_dag(dag_id: str, pipeline: str, schedule, max_active_runs: int | None = None, mode: str | None = None,
              **dag_kwargs):
    stages = stages_for(pipeline)
    mode = task_mode(mode)
    make_task = kubernetes_task if mode == "kubernetes" else local_task

    @dag(
        dag_id=dag_id,
        schedule=schedule,
        start_date=START_DATE,
        catchup=False,
        max_active_runs=max_active_runs or int(os.environ.get("ONEREC_MAX_ACTIVE_RUNS", "1")),
        tags=["onerec", pipeline, mode],
        doc_md=f"OneRec `{pipeline}` pipeline ({mode} tasks), generated from components/registry.py: "
               + " -> ".join(s.name for s in stages),
        deadline=deadline_alert(dag_id, pipeline),
        params={
            "date": Param(None, type=["null", "string"], pattern=r"^\d{4}-\d{2}-\d{2}$",
                          description="partition date YYYY-MM-DD; default: the run's logical date"),
            "config": Param(None, type=["null", "string"], description="preset YAML (default $ONEREC_CONFIG)"),
            "set": Param([], type="array", items={"type": "string"}, description="key=value overrides"),
            "until": Param(None, type=["null", "string"],
                           description="run stages up to and including this one; later stages skip"),
        },
        **dag_kwargs,
    )
    def pipeline_dag():
        tasks = {s.name: make_task(s, pipeline) for s in stages}
        for s in stages:
            for up in s.upstream:
                if up in tasks:
                    tasks[up] >> tasks[s.name]

    return pipeline_dag()


# "@daily" alone means CronTriggerTimetable in Airflow 3, whose logical date is the run time (D+1);
# the data-interval timetable gives logical date = data interval start = the finished day D.
onerec_daily = build_dag("onerec_daily", "daily", CronDataIntervalTimetable("@daily", timezone="UTC"))
onerec_bootstrap = build_dag("onerec_bootstrap", "bootstrap", None)
