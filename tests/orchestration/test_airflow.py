"""The Airflow DAGs: generated from the registry, light to parse, and running the real stages.

`dag.test()` runs a DAG run in this process on the SQLite metadata DB; every task still runs its
stage as a subprocess (`python -m components.cli run ...`), as in production.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest

from components.registry import stages_for

REPO = Path(__file__).resolve().parents[2]
DAG_FILE = REPO / "dags" / "onerec_daily.py"
DEBUG = str(REPO / "configs" / "debug.yaml")
DATE = "2026-01-02"
LOGICAL_DATE = dt.datetime(2026, 1, 2, tzinfo=dt.timezone.utc)
HEAVY = ("torch", "pyspark", "mlflow", "pandas", "great_expectations", "faiss", "pyarrow", "numpy", "boto3",
         "onerec.store", "onerec.config")

pytestmark = pytest.mark.orchestration


def stage_dir(home: Path, stage: str, date: str = DATE, pipeline: str = "daily") -> Path:
    return home / "artifacts" / pipeline / date / stage


def load_dag_module():
    spec = importlib.util.spec_from_file_location("onerec_dag_under_test", DAG_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def states(dag_run) -> dict:
    return {ti.task_id: (str(ti.state), ti.try_number) for ti in dag_run.get_task_instances()}


# -- parsing and structure (no metadata DB, no stage runs) ---------------------------------------

def test_dag_file_imports_nothing_heavy():
    """The scheduler parses this file in a loop: it must not import torch, mlflow, pandas, ..."""
    code = ("import importlib.util, json, sys\n"
            "import airflow.sdk  # loaded by the DAG processor before any DAG file\n"
            f"spec = importlib.util.spec_from_file_location('onerec_daily', {str(DAG_FILE)!r})\n"
            "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
            f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd="/")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []


@pytest.mark.parametrize("dag_id, pipeline", [("onerec_daily", "daily"), ("onerec_bootstrap", "bootstrap")])
def test_dags_mirror_the_registry(dagbag, dag_id, pipeline):
    assert dagbag.import_errors == {}
    dag = dagbag.dags[dag_id]
    stages = stages_for(pipeline)
    assert sorted(dag.task_ids) == sorted(s.name for s in stages)
    for s in stages:
        t = dag.get_task(s.name)
        assert t.upstream_task_ids == set(s.upstream)
        assert t.retries == s.retries
        assert t.retry_exponential_backoff == 2.0  # a multiplier in Airflow 3.3: True would mean 1.0, no backoff
        assert t.execution_timeout == dt.timedelta(seconds=s.timeout_s)
        assert t.on_failure_callback
    assert dag.get_task("validate").retries == 0  # bad data does not get better by retrying
    assert dag.max_active_runs == 1 and not dag.catchup  # day D warm-starts from D-1: backfills run in order
    assert set(dag.params) == {"date", "config", "set", "until"}


def test_deadline_alert(monkeypatch):
    """Every run must finish within N hours of being queued, else the pluggable notifier is called."""
    m = load_dag_module()
    monkeypatch.delenv("ONEREC_DEADLINE_HOURS")  # the conftest turns it off for dag.test(); the default is on
    [deadline] = m.build_dag("with_deadline", "daily", None).deadline
    assert deadline.callback.path == "components.alerts.deadline_missed"
    assert deadline.callback.kwargs == {"dag_id": "with_deadline", "pipeline": "daily", "hours": 12.0}
    assert type(deadline.reference).__name__ == "DagRunQueuedAtDeadline"  # not the logical date: backfills
    assert deadline.interval == dt.timedelta(hours=12)
    monkeypatch.setenv("ONEREC_DEADLINE_HOURS", "3")
    assert m.build_dag("with_deadline", "bootstrap", None).deadline[0].interval == dt.timedelta(hours=3)


def test_schedules(dagbag):
    daily = dagbag.dags["onerec_daily"].timetable
    assert type(daily).__name__ == "CronDataIntervalTimetable"  # logical date = the finished day
    assert "expression='0 0 * * *', timezone='UTC'" in repr(daily)
    assert type(dagbag.dags["onerec_bootstrap"].timetable).__name__ == "NullTimetable"  # triggered only


def test_partition_date_resolution():
    from airflow.sdk.exceptions import AirflowFailException

    m = load_dag_module()
    assert m.partition_date({"params": {"date": "2026-03-04"}, "logical_date": LOGICAL_DATE}) == "2026-03-04"
    assert m.partition_date({"params": {"date": None}, "logical_date": LOGICAL_DATE}) == DATE
    interval_only = {"params": {}, "logical_date": None, "data_interval_start": LOGICAL_DATE}
    assert m.partition_date(interval_only) == DATE
    with pytest.raises(AirflowFailException, match="params.date"):
        m.partition_date({"params": {"date": None}, "logical_date": None})


def test_config_passthrough(monkeypatch):
    m = load_dag_module()
    assert m.config_args({"config": None, "set": []}, "daily") == ["--set", "pipeline=daily"]
    monkeypatch.setenv("ONEREC_CONFIG", "/etc/onerec.yaml")
    assert m.config_args({"config": None, "set": ["data.options.seed=1", "pipeline=bootstrap"]}, "daily") == [
        "--config", "/etc/onerec.yaml", "--set", "data.options.seed=1", "--set", "pipeline=bootstrap",
        "--set", "pipeline=daily"]  # the DAG's own pipeline wins
    assert m.config_args({"config": "x.yaml"}, "bootstrap")[:2] == ["--config", "x.yaml"]


def test_default_failure_notifier_logs_one_line(capsys, caplog):
    from types import SimpleNamespace

    ti = SimpleNamespace(dag_id="onerec_daily", task_id="validate", try_number=2)
    load_dag_module().notify_failure({"ti": ti, "params": {"date": DATE}})
    out = "".join(capsys.readouterr()) + caplog.text  # where it lands depends on Airflow's logging setup
    assert "onerec stage failed: dag=onerec_daily task=validate date=2026-01-02 try=2" in out


@pytest.mark.parametrize("code, error", [(0, None), (1, "RuntimeError"), (2, "AirflowFailException"),
                                         (3, "AirflowSkipException")])
def test_exit_codes_map_to_task_states(tmp_path, monkeypatch, code, error):
    fake = tmp_path / "python"
    fake.write_text(f"#!/bin/sh\necho \"$@\"\necho 'error: something'\nexit {code}\n")
    fake.chmod(0o755)
    m = load_dag_module()
    monkeypatch.setattr(sys, "executable", str(fake))
    if error is None:
        m.run_stage("ingest", DATE, [])
    else:
        with pytest.raises(Exception) as info:
            m.run_stage("ingest", DATE, [])
        assert type(info.value).__name__ == error
        assert "error: something" in str(info.value)


# -- real runs on the SQLite metadata DB ---------------------------------------------------------

@pytest.mark.slow
def test_dag_test_runs_every_stage(airflow_db, dagbag, pipeline_home):
    """An Airflow 3 manual run without logical date: the partition comes from params.date. The day after
    the shared debug pipeline's two days, so every stage runs for real, on yesterday's state."""
    date = "2026-01-03"
    dag_run = dagbag.dags["onerec_daily"].test(logical_date=None, run_conf={"date": date, "config": DEBUG})
    assert str(dag_run.state) == "success", states(dag_run)
    for s in stages_for("daily"):
        d = stage_dir(pipeline_home, s.name, date)
        assert (d / "_SUCCESS").is_file(), d
        assert json.loads((d / "manifest.json").read_text())["date"] == date


FAILURES: list[tuple[str, int]] = []


def record_failure(context) -> None:
    """A pluggable notifier (ONEREC_FAILURE_NOTIFIER=module:function)."""
    FAILURES.append((context["ti"].task_id, context["ti"].try_number))


@contextlib.contextmanager
def resuming(run_id: str):
    """Make `dag.test()` behave like the scheduler after `airflow tasks clear`: resume the existing
    run, running only its cleared tasks. (dag.test itself deletes the run and starts over.)"""
    from airflow.models import dagrun
    from airflow.serialization.definitions.dag import SerializedDAG
    from airflow.utils.state import DagRunState
    from sqlalchemy import select

    def existing_run(*, dag, session, **_):
        run = session.scalar(select(dagrun.DagRun).where(dagrun.DagRun.dag_id == dag.dag_id,
                                                         dagrun.DagRun.run_id == run_id))
        run.state = DagRunState.RUNNING
        session.commit()
        run.dag = dag
        return run

    with mock.patch.object(SerializedDAG, "clear_dags"), mock.patch.object(dagrun, "get_or_create_dagrun", existing_run):
        yield


@pytest.mark.slow
def test_failed_stage_clear_and_rerun(airflow_db, dagbag, onerec_home, monkeypatch):
    """On call: validate failed; `airflow tasks clear -t validate -d` reruns validate and what is
    downstream of it, never ingest: ingest's outputs, manifest and MLflow run stay as they were.
    Stages after validate are only marked success here (test_dag_test_runs_every_stage runs them)."""
    dag = dagbag.dags["onerec_daily"]
    after = "|".join(s.name for s in stages_for("daily") if s.name not in ("ingest", "validate")) or None
    monkeypatch.setenv("ONEREC_FAULT", "validate:start:raise")
    monkeypatch.setenv("ONEREC_FAILURE_NOTIFIER", f"{__name__}:record_failure")
    FAILURES.clear()
    # date from the logical date. "date": None explicitly: in one process, dag.test() leaves an earlier run's
    # conf values on the DAG's shared Param objects (process_params updates them in place)
    run = dag.test(logical_date=LOGICAL_DATE, run_conf={"config": DEBUG, "date": None})
    assert str(run.state) == "failed"
    assert {k: v for k, v in states(run).items() if k in ("ingest", "validate")} == {
        "ingest": ("success", 1), "validate": ("failed", 1)}
    assert FAILURES == [("validate", 1)]
    ingest = stage_dir(onerec_home, "ingest")
    manifest = (ingest / "manifest.json").read_bytes()
    mtime = (ingest / "manifest.json").stat().st_mtime_ns
    assert json.loads(manifest)["mlflow_run_id"]
    assert not (stage_dir(onerec_home, "validate") / "_SUCCESS").exists()

    monkeypatch.delenv("ONEREC_FAULT")
    # Airflow 3.3 matches -t as a task id, not a regex: "^validate$" would silently clear nothing
    clear = subprocess.run([str(Path(sys.executable).with_name("airflow")), "tasks", "clear", dag.dag_id,
                            "-t", "validate", "--downstream", "-s", DATE, "-e", DATE, "-y"],
                           capture_output=True, text=True, timeout=300, env=os.environ.copy())
    assert clear.returncode == 0, clear.stderr[-3000:]
    from airflow.models.dagrun import DagRun

    cleared = states(DagRun.find(dag_id=dag.dag_id, run_id=run.run_id)[0])
    assert cleared.pop("ingest") == ("success", 1)
    assert {state for state, _ in cleared.values()} == {"None"}
    with resuming(run.run_id):
        rerun = dag.test(logical_date=LOGICAL_DATE, run_conf={"config": DEBUG, "date": None}, mark_success_pattern=after)
    assert rerun.run_id == run.run_id and str(rerun.state) == "success", states(rerun)
    final = states(rerun)
    assert final.pop("ingest") == ("success", 1)  # not run again
    assert final.pop("validate") == ("success", 2)
    assert {state for state, _ in final.values()} <= {"success"}

    assert (ingest / "manifest.json").read_bytes() == manifest
    assert (ingest / "manifest.json").stat().st_mtime_ns == mtime
    validate = stage_dir(onerec_home, "validate")
    assert (validate / "_SUCCESS").is_file()
    assert json.loads((validate / "manifest.json").read_text())["date"] == DATE
