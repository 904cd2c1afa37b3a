"""Shared fixtures: an isolated ONEREC_HOME per test, the real CLI, and a real S3 API (moto server)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO / ".." / "shared" / "data").resolve()

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


def run_cli(*args, env: dict | None = None, check: bool = False) -> subprocess.CompletedProcess:
    """Run the real `onerec` CLI in a subprocess (as Airflow and the containers do)."""
    proc = subprocess.run([sys.executable, "-m", "components.cli", *map(str, args)], cwd=REPO,
                          env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"onerec {' '.join(map(str, args))} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


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


DEBUG_CONFIG = REPO / "configs" / "debug.yaml"
