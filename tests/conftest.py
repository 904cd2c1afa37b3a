"""Shared fixtures: an isolated ONEREC_HOME per test, the real CLI, and a real S3 API (moto server)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from support import DEBUG_CONFIG, REPO, SHARED_DATA, run_cli  # noqa: F401  (re-exported)

# Tests never reach the network and never write into the developer's home.
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")


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

