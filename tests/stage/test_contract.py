"""The stage contract through the real CLI: no-op reruns, --force, crash safety, exit codes, MLflow runs."""
from __future__ import annotations

import json
import os

import pytest

from support import DEBUG_CONFIG, run_cli

D = "2026-01-02"


def stage_dir(home, stage, date=D, pipeline="daily"):
    return home / "artifacts" / pipeline / date / stage


def test_rerun_is_noop_and_force_recomputes(onerec_home):
    first = run_cli("run", "ingest", "--date", D, "--config", DEBUG_CONFIG, check=True)
    assert "done" in first.stdout
    manifest = json.loads((stage_dir(onerec_home, "ingest") / "manifest.json").read_text())
    assert manifest["input_digests"] == {} and manifest["metrics"]["impressions"] > 0

    again = run_cli("run", "ingest", "--date", D, "--config", DEBUG_CONFIG, check=True)
    assert "up to date" in again.stdout
    assert json.loads((stage_dir(onerec_home, "ingest") / "manifest.json").read_text()) == manifest

    forced = run_cli("run", "ingest", "--date", D, "--config", DEBUG_CONFIG, "--force", check=True)
    assert "done" in forced.stdout
    new = json.loads((stage_dir(onerec_home, "ingest") / "manifest.json").read_text())
    assert new["started_at"] != manifest["started_at"]
    assert new["outputs"] == manifest["outputs"]            # deterministic generator: same bytes
    assert new["mlflow_run_id"] != manifest["mlflow_run_id"]  # a recomputation is a new MLflow run


def test_config_change_of_the_stage_recomputes_but_other_sections_do_not(onerec_home):
    run_cli("run", "ingest", "--date", D, "--config", DEBUG_CONFIG, check=True)
    other = run_cli("run", "ingest", "--date", D, "--config", DEBUG_CONFIG, "--set", "validate.drift_days=3", check=True)
    assert "up to date" in other.stdout
    changed = run_cli("run", "ingest", "--date", D, "--config", DEBUG_CONFIG, "--set", "data.options.seed=7", check=True)
    assert "done" in changed.stdout


def test_killed_mid_write_is_redone_cleanly(onerec_home):
    killed = run_cli("run", "ingest", "--date", D, "--config", DEBUG_CONFIG,
                     env={"ONEREC_FAULT": "ingest:before_commit:kill"})
    assert killed.returncode == -9
    d = stage_dir(onerec_home, "ingest")
    assert (d / "impressions.parquet").exists()                         # outputs were written...
    assert not (d / "_SUCCESS").exists() and not (d / "manifest.json").exists()  # ...but nothing looks done
    blocked = run_cli("run", "validate", "--date", D, "--config", DEBUG_CONFIG)
    assert blocked.returncode == 2 and "no _SUCCESS" in blocked.stderr

    redo = run_cli("run", "ingest", "--date", D, "--config", DEBUG_CONFIG, check=True)
    assert "done" in redo.stdout and (d / "_SUCCESS").exists()


def test_crash_mid_write_on_s3_leaves_nothing_that_looks_finished(onerec_home, s3_env):
    import boto3

    root = f"s3://{s3_env}/artifacts"
    crashed = run_cli("run", "ingest", "--date", D, "--config", DEBUG_CONFIG, "--set", f"store.root={root}",
                      env={"ONEREC_FAULT": "ingest:before_commit:raise"})
    assert crashed.returncode == 1
    s3 = boto3.client("s3", endpoint_url=os.environ["ONEREC_S3_ENDPOINT_URL"])
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=s3_env, Prefix="artifacts/").get("Contents", [])}
    assert f"artifacts/daily/{D}/ingest/impressions.parquet" in keys
    assert not any(k.endswith(("_SUCCESS", "manifest.json")) for k in keys)

    run_cli("run", "ingest", "--date", D, "--config", DEBUG_CONFIG, "--set", f"store.root={root}", check=True)
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=s3_env, Prefix="artifacts/").get("Contents", [])}
    assert f"artifacts/daily/{D}/ingest/_SUCCESS" in keys
    again = run_cli("run", "ingest", "--date", D, "--config", DEBUG_CONFIG, "--set", f"store.root={root}", check=True)
    assert "up to date" in again.stdout


@pytest.mark.parametrize("args, message", [
    (["run", "ingest", "--date", "2026-13-01"], "bad --date"),
    (["run", "nope", "--date", D], "unknown stage 'nope'"),
    (["run", "ingest", "--date", D, "--config", "/no/such.yaml"], "config file not found"),
    (["run", "ingest", "--date", D, "--set", "novalue"], "--set expects key=value"),
    (["run", "ingest", "--date", D, "--set", "data.source=nosuch"], "unknown data source 'nosuch'"),
    (["run", "ingest", "--date", D, "--set", "data.source=kuairand", "--set", "data.path=/no/where"], "does not exist"),
    (["run", "ingest", "--date", "2020-01-01"], "before the synthetic world's start_date"),
    (["run", "validate", "--date", D], "ingest for 2026-01-02 has no _SUCCESS"),
    (["pipeline", "run", "--start", "2026-01-03", "--end", "2026-01-01"], "before --start"),
    (["data", "download", "no-such-dataset"], "no-such-dataset"),
    (["pipeline", "run", "--start", D, "--until", "nope"], "--until 'nope' is not a stage"),
])
def test_user_mistakes_get_one_clear_line_and_exit_2(onerec_home, args, message):
    proc = run_cli(*args)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "Traceback" not in proc.stderr


def test_malformed_config_file(onerec_home, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    proc = run_cli("run", "ingest", "--date", D, "--config", bad)
    assert proc.returncode == 2 and "malformed config" in proc.stderr and "Traceback" not in proc.stderr
