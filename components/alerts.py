"""Alerts shared by the orchestrators: one pluggable notifier, import-light (no airflow, no kfp, no torch).

ONEREC_FAILURE_NOTIFIER="module:function" plugs in a notifier (Slack, PagerDuty, ...). It is called with
one dict: Airflow task failures pass the task context (dags/onerec_daily.py), Airflow deadline misses and
the Kubeflow exit handler pass {"event": ..., ...} built here. Without a notifier, one ERROR line is
logged that an alerting rule can match.
"""
from __future__ import annotations

import importlib
import logging
import os

log = logging.getLogger("onerec.alerts")


def notifier():
    """The configured notifier function, or None."""
    if target := os.environ.get("ONEREC_FAILURE_NOTIFIER"):
        module, _, fn = target.partition(":")
        return getattr(importlib.import_module(module), fn)
    return None


def alert(event: dict) -> None:
    if (fn := notifier()) is not None:
        fn(event)
        return
    log.error("onerec alert: %s", " ".join(f"{k}={v}" for k, v in event.items()))


async def deadline_missed(context=None, **kwargs) -> None:
    """Airflow DeadlineAlert callback (runs in the triggerer): the DAG run is late."""
    dag_run = (context or {}).get("dag_run") or {}
    run_id = dag_run.get("run_id") if isinstance(dag_run, dict) else getattr(dag_run, "run_id", None)
    alert({"event": "deadline_missed", "run_id": run_id or "?", **kwargs})


def pipeline_finished(pipeline: str, date: str, state: str, error: str = "", run: str = "") -> bool:
    """Kubeflow exit handler: alert unless the run succeeded. Returns whether an alert was sent."""
    if state.upper() in ("SUCCEEDED", "SUCCESS", "COMPLETE"):
        log.info("onerec %s %s: %s", pipeline, date, state)
        return False
    alert({"event": "pipeline_failed", "pipeline": pipeline, "date": date, "state": state, "run": run,
           "error": error[:500]})
    return True
