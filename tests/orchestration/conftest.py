"""Airflow and Kubeflow Pipelines, for real: an isolated AIRFLOW_HOME with a SQLite metadata DB.

Airflow reads its configuration when it is first imported, so the environment is set here, at
import time, before any test module can import airflow.
"""
from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DAGS = REPO / "dags"
if str(REPO) not in sys.path:  # `pipelines` is a folder of the checkout, not an installed package
    sys.path.insert(0, str(REPO))

AIRFLOW_HOME = tempfile.mkdtemp(prefix="onerec-airflow-")
atexit.register(shutil.rmtree, AIRFLOW_HOME, ignore_errors=True)
os.environ.update({
    "AIRFLOW_HOME": AIRFLOW_HOME,
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{AIRFLOW_HOME}/airflow.db",
})
for var in ("ONEREC_CONFIG", "ONEREC_FAILURE_NOTIFIER", "ONEREC_MAX_ACTIVE_RUNS", "ONEREC_KFP_IMAGE", "ONEREC_IMAGE",
            "ONEREC_GPU_IMAGE", "ONEREC_TASK_MODE"):
    os.environ.pop(var, None)
# dag.test() in Airflow 3.3.2 cannot finish a run of a DAG with a deadline alert (DagRun.update_state looks the
# alerts up by id; dag.test's in-memory DAG holds them as dicts), so the DAGs in this process have none.
# test_deadline_alert builds one with it; test_airflow_postgres.py runs them with it under a real scheduler.
os.environ["ONEREC_DEADLINE_HOURS"] = "0"


@pytest.fixture(scope="session")
def airflow_db() -> str:
    """`airflow db migrate` once per session (a subprocess: it configures logging globally)."""
    airflow = Path(sys.executable).with_name("airflow")
    proc = subprocess.run([str(airflow), "db", "migrate"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return AIRFLOW_HOME


@pytest.fixture(scope="session")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))
