"""Airflow on PostgreSQL with the LocalExecutor, for real: a scheduler, the execution API server, two
dates in parallel and a 3-day backfill, with MLflow on PostgreSQL too.

Kept cheap (2 cores): the DAG runs carry `params.until`, so only a prefix of the stages runs
(`ingest, validate` for the two parallel dates, `ingest` for the backfill); the stages after it skip
without starting a stage process. Every stage runs for real in
test_airflow.py::test_dag_test_runs_every_stage. The whole file takes about 2-3 minutes on 2 idle cores.

The server must be reachable at ONEREC_TEST_PG (default postgresql://postgres@127.0.0.1:5432/postgres,
trust auth) and allow CREATE DATABASE; the test skips with the reason otherwise. It creates two databases
(Airflow metadata, MLflow backend) and drops them at the end.
"""
from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEBUG = str(REPO / "configs" / "debug.yaml")
PG = os.environ.get("ONEREC_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
DAG_ID = "onerec_pg"
PARALLEL = ("2026-01-01", "2026-01-02")
BACKFILL = ("2026-01-03", "2026-01-04", "2026-01-05")
# a smaller synthetic world than debug.yaml: these runs test orchestration, not the stages
SETS = ["data.options.n_users=60", "data.options.n_items=120"]

pytestmark = [pytest.mark.orchestration, pytest.mark.slow]

DAG_FILE = f'''
import datetime as dt
import importlib.util

from airflow.sdk import CronDataIntervalTimetable

spec = importlib.util.spec_from_file_location("onerec_dags", {str(REPO / "dags" / "onerec_daily.py")!r})
onerec_dags = importlib.util.module_from_spec(spec)
spec.loader.exec_module(onerec_dags)
# the production definition; max_active_runs=2 so that two dates run side by side, and an end date so
# that unpausing it schedules nothing of its own (only the triggered runs and the backfill run)
onerec_pg = onerec_dags.build_dag({DAG_ID!r}, "daily", CronDataIntervalTimetable("@daily", timezone="UTC"),
                                  max_active_runs=2, end_date=dt.datetime(2026, 1, 6, tzinfo=dt.timezone.utc))
'''


def _connect(db: str | None = None):
    import psycopg2

    dsn = PG if db is None else PG.rsplit("/", 1)[0] + f"/{db}"
    conn = psycopg2.connect(dsn, connect_timeout=3)
    conn.autocommit = True
    return conn


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def databases():
    pytest.importorskip("psycopg2", reason="psycopg2 is in the airflow extra")
    try:
        conn = _connect()
    except Exception as e:  # noqa: BLE001 - any reason the server is not usable
        pytest.skip(f"PostgreSQL not reachable at {PG}: {str(e).strip().splitlines()[0]}")
    suffix = secrets.token_hex(4)
    names = {"airflow": f"onerec_airflow_{suffix}", "mlflow": f"onerec_mlflow_{suffix}"}
    with conn.cursor() as cur:
        for name in names.values():
            cur.execute(f"CREATE DATABASE {name}")
    yield {k: PG.rsplit("/", 1)[0] + f"/{v}" for k, v in names.items()}
    with conn.cursor() as cur:
        for name in names.values():
            cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    conn.close()


@pytest.fixture(scope="module")
def stack(databases, tmp_path_factory):
    """Metadata DB migrated, DAG serialized, the execution API and a LocalExecutor scheduler running."""
    tmp = tmp_path_factory.mktemp("airflow_pg")
    dags = tmp / "dags"
    dags.mkdir()
    (dags / "onerec_pg.py").write_text(DAG_FILE)
    home = tmp / "onerec_home"
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "ONEREC_"))}
    env.update({
        "AIRFLOW_HOME": str(tmp / "airflow"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": databases["airflow"].replace("postgresql://", "postgresql+psycopg2://"),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(16),
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
        "ONEREC_HOME": str(home),
        "PYTHONPATH": str(REPO),
    })
    airflow = str(Path(sys.executable).with_name("airflow"))

    def cli(*args, timeout=300):
        proc = subprocess.run([airflow, *args], env=env, capture_output=True, text=True, timeout=timeout)
        assert proc.returncode == 0, f"airflow {' '.join(args)}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        return proc.stdout

    t0 = time.time()
    cli("db", "migrate")
    cli("dags", "reserialize")
    # MLflow on PostgreSQL, schema created once here (not raced by the first two stage processes)
    import mlflow
    from mlflow import MlflowClient

    mlflow_uri = databases["mlflow"].replace("postgresql://", "postgresql+psycopg2://")
    MlflowClient(mlflow_uri).create_experiment("onerec", artifact_location=(tmp / "mlartifacts").as_uri())
    mlflow.set_tracking_uri(None)

    logs = tmp / "logs"
    logs.mkdir()
    procs = []
    for name, args in (("api", ["api-server", "--apps", "execution", "--host", "127.0.0.1", "--port", str(port),
                                "--workers", "1"]),
                       ("scheduler", ["scheduler", "--skip-serve-logs"])):
        out = open(logs / f"{name}.log", "w")
        procs.append(subprocess.Popen([airflow, *args], env=env, stdout=out, stderr=subprocess.STDOUT,
                                      start_new_session=True))
    try:
        cli("dags", "unpause", DAG_ID)
        yield {"env": env, "cli": cli, "home": home, "mlflow": mlflow_uri, "logs": logs, "started": t0}
    finally:
        for p in procs:  # only what this fixture started, by process group
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)


def _runs(stack) -> dict:
    with _connect(stack["env"]["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].rsplit("/", 1)[1]) as conn, conn.cursor() as cur:
        cur.execute("SELECT run_id, state, logical_date, start_date, end_date, run_type FROM dag_run WHERE dag_id = %s",
                    (DAG_ID,))
        return {r[0]: {"state": r[1], "logical_date": r[2], "start": r[3], "end": r[4], "type": r[5]}
                for r in cur.fetchall()}


def _tasks(stack, run_id: str) -> dict:
    with _connect(stack["env"]["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].rsplit("/", 1)[1]) as conn, conn.cursor() as cur:
        cur.execute("SELECT task_id, state FROM task_instance WHERE dag_id = %s AND run_id = %s", (DAG_ID, run_id))
        return dict(cur.fetchall())


def _wait(stack, run_ids, timeout=240) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        runs = _runs(stack)
        if all(runs.get(r, {}).get("state") in ("success", "failed") for r in run_ids):
            return runs
        time.sleep(2)
    tails = {p.name: p.read_text()[-3000:] for p in stack["logs"].iterdir()}
    raise AssertionError(f"runs not finished in {timeout}s: {_runs(stack)}\n{tails}")


def _stage(stack, date: str, stage: str) -> Path:
    return stack["home"] / "artifacts" / "daily" / date / stage


def _check_date(stack, client, date: str, stages: tuple[str, ...]) -> set[str]:
    """The date's stage directories are its own, and each points at its own MLflow run, nested under the
    date's one parent run."""
    run_ids = set()
    for stage in stages:
        d = _stage(stack, date, stage)
        assert (d / "_SUCCESS").is_file(), d
        manifest = json.loads((d / "manifest.json").read_text())
        assert (manifest["date"], manifest["stage"]) == (date, stage)
        run = client.get_run(manifest["mlflow_run_id"])
        assert run.data.tags["onerec.date"] == date and run.data.tags["onerec.stage"] == stage
        assert run.data.tags["onerec.orchestrator_run"].startswith(f"airflow:{DAG_ID}/")
        assert run.info.status == "FINISHED"
        parent = client.get_run(run.data.tags["mlflow.parentRunId"])
        assert parent.data.tags["onerec.run_key"] == f"daily/{date}"
        run_ids.add(run.info.run_id)
    exp = client.get_experiment_by_name("onerec").experiment_id
    parents = client.search_runs([exp], f"tags.`onerec.run_key` = 'daily/{date}' and tags.`onerec.stage` = '_pipeline'")
    assert len(parents) == 1, [p.info.run_id for p in parents]
    return run_ids


def test_parallel_dates_and_backfill_on_postgres(stack):
    from mlflow import MlflowClient

    conf = {"config": DEBUG, "until": "validate", "set": [*SETS, f"mlflow.tracking_uri={stack['mlflow']}"]}
    triggered = []
    for date in PARALLEL:
        run_id = f"pg__{date}"
        stack["cli"]("dags", "trigger", DAG_ID, "--run-id", run_id, "--logical-date", f"{date}T00:00:00+00:00",
                     "--conf", json.dumps(conf))
        triggered.append(run_id)
    runs = _wait(stack, triggered)
    for r in triggered:
        assert runs[r]["state"] == "success", (r, _tasks(stack, r), list(stack["logs"].iterdir()))
        tasks = _tasks(stack, r)
        assert tasks.pop("ingest") == tasks.pop("validate") == "success"
        assert set(tasks.values()) == {"skipped"}  # after params.until: not run
    # the two runs overlapped: max_active_runs=2 let them run side by side
    a, b = (runs[r] for r in triggered)
    assert a["start"] < b["end"] and b["start"] < a["end"], (a, b)

    client = MlflowClient(stack["mlflow"])
    ids = [_check_date(stack, client, d, ("ingest", "validate")) for d in PARALLEL]
    assert not ids[0] & ids[1]
    assert json.loads((_stage(stack, PARALLEL[0], "ingest") / "manifest.json").read_text())["outputs"] != \
        json.loads((_stage(stack, PARALLEL[1], "ingest") / "manifest.json").read_text())["outputs"]

    # backfill a 3-day range (ingest only), in date order, one run at a time as production does
    stack["cli"]("backfill", "create", "--dag-id", DAG_ID, "--from-date", BACKFILL[0], "--to-date", BACKFILL[-1],
                 "--max-active-runs", "1", "--dag-run-conf", json.dumps({**conf, "until": "ingest"}))
    deadline = time.time() + 30
    while time.time() < deadline and len([r for r in _runs(stack).values() if r["type"] == "backfill"]) < 3:
        time.sleep(1)
    backfill = {k: v for k, v in _runs(stack).items() if v["type"] == "backfill"}
    assert len(backfill) == 3, _runs(stack)
    runs = _wait(stack, list(backfill))
    assert sorted(runs[r]["logical_date"].date().isoformat() for r in backfill) == list(BACKFILL)
    for r in backfill:
        assert runs[r]["state"] == "success", (r, _tasks(stack, r))
    for date in BACKFILL:
        _check_date(stack, client, date, ("ingest",))
        assert not _stage(stack, date, "validate").exists()
    ordered = sorted((runs[r] for r in backfill), key=lambda r: r["logical_date"])
    assert all(x["end"] <= y["start"] for x, y in zip(ordered, ordered[1:]))  # one at a time, oldest first
    # the runs carried the DAG's deadline alert (pruned once a run succeeds; the alert itself stays)
    with _connect(stack["env"]["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].rsplit("/", 1)[1]) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM deadline_alert WHERE name = %s", (f"{DAG_ID} finished within 12h",))
        assert cur.fetchone()[0] >= 1
    print(f"airflow on postgres: {time.time() - stack['started']:.0f}s")
