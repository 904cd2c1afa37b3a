"""Shared fixtures: an isolated ONEREC_HOME per test, the real CLI, and a real S3 API (moto server)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from support import DEBUG_CONFIG, copy_home, run_cli

# Tests never reach the network and never write into the developer's home.
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")


# The longest files first, minutes each on 2 cores (`--durations` of a clean-clone run). xdist (`--dist loadfile
# --no-loadscope-reorder` in pyproject.toml) hands files out in collection order; its default order, most tests
# first, started these few-but-long files last, and the run waited on one worker at the end.
LONGEST_FIRST = ("tests/orchestration/test_airflow.py", "tests/orchestration/test_kfp.py",
                 "tests/orchestration/test_airflow_postgres.py", "tests/stage/test_pipeline_mlflow.py",
                 "tests/stage/test_online_validate_stage.py", "tests/stage/test_post_training_stages.py",
                 "tests/stage/test_pretrain_stage.py", "tests/model/test_train.py",
                 "tests/stage/test_s3_faults.py", "tests/data/test_bad_input_catalogue.py")


def pytest_collection_modifyitems(items):
    rank = {path: i for i, path in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))   # stable: the rest keep their order


@pytest.fixture
def onerec_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "onerec_home"
    monkeypatch.setenv("ONEREC_HOME", str(home))
    monkeypatch.delenv("ONEREC_FAULT", raising=False)
    return home


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 API: moto's server on 127.0.0.1, a free port, stopped at the end of the session."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    import boto3

    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                 "ONEREC_S3_ENDPOINT_URL": s3_server, "MLFLOW_S3_ENDPOINT_URL": s3_server}.items():
        monkeypatch.setenv(k, v)
    bucket = f"onerec-{os.urandom(4).hex()}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=bucket)
    return bucket



# -- one finished debug pipeline, shared by every test that needs trained upstream stages ----------------

PIPELINE_DATES = ("2026-01-01", "2026-01-02")


@pytest.fixture(scope="session")
def debug_pipeline(tmp_path_factory) -> Path:
    """A read-only ONEREC_HOME where the debug world ran every stage through `pretrain` for PIPELINE_DATES.

    Built once per test session through the real CLI; xdist workers share it (the first one builds it
    under a file lock, the others wait and reuse it). Tests copy it with `pipeline_home`, never write here.
    """
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):       # each worker has its own basetemp under the session's
        root = root.parent
    snapshot = root / "debug_pipeline"
    with FileLock(str(root / "debug_pipeline.lock")):
        if not (snapshot / "DONE").is_file():
            shutil.rmtree(snapshot, ignore_errors=True)
            home = snapshot / "onerec_home"
            run_cli("pipeline", "run", "--start", PIPELINE_DATES[0], "--end", PIPELINE_DATES[-1],
                    "--until", "pretrain", "--config", DEBUG_CONFIG,
                    env={"ONEREC_HOME": str(home), "ONEREC_FAULT": ""}, check=True)
            (snapshot / "DONE").write_text("ok")
    return snapshot / "onerec_home"


@pytest.fixture
def pipeline_home(debug_pipeline, onerec_home) -> Path:
    """A private, writable copy of `debug_pipeline` as this test's ONEREC_HOME."""
    return copy_home(debug_pipeline, onerec_home)
