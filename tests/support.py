"""Plain helpers shared by test modules (import as `from support import ...`).

They live here rather than in conftest.py: several folders have a conftest, and `from conftest import`
would pick whichever of them Python imported first.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO / ".." / "shared" / "data").resolve()
DEBUG_CONFIG = REPO / "configs" / "debug.yaml"


def shared(name: str) -> Path:
    """A public dataset folder under ../shared/data; the calling test skips when it is absent."""
    import pytest

    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"public dataset {name!r} not available at {path}")
    return path


def run_cli(*args, env: dict | None = None, check: bool = False) -> subprocess.CompletedProcess:
    """Run the real `onerec` CLI in a subprocess (as Airflow and the containers do)."""
    proc = subprocess.run([sys.executable, "-m", "components.cli", *map(str, args)], cwd=REPO,
                          env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"onerec {' '.join(map(str, args))} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def copy_home(src: Path, dst: Path) -> Path:
    """Copy an ONEREC_HOME; MLflow's absolute artifact locations are moved to the copy too."""
    import sqlite3

    shutil.copytree(src, dst)
    with contextlib.closing(sqlite3.connect(dst / "mlflow.db")) as db, db:
        for table, column in (("experiments", "artifact_location"), ("runs", "artifact_uri")):
            db.execute(f"UPDATE {table} SET {column} = replace({column}, ?, ?)", (src.as_uri(), dst.as_uri()))
    return dst
