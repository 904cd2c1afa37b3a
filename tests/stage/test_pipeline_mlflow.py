"""The local runner and MLflow lineage: parent run per (pipeline, date), nested run per stage, retries reuse."""
from __future__ import annotations

import json

import pytest

from components.registry import stages_for
from support import DEBUG_CONFIG, SHARED_DATA, run_cli
from onerec import tracking


def _client(home):
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(f"sqlite:///{home / 'mlflow.db'}")
    client = MlflowClient()
    return client, client.get_experiment_by_name("onerec").experiment_id


def test_pipeline_runs_dates_with_nested_mlflow_runs(onerec_home):
    proc = run_cli("pipeline", "run", "--start", "2026-01-01", "--end", "2026-01-02", "--until", "validate",
                   "--config", DEBUG_CONFIG, check=True)
    assert "mlflow:" in proc.stdout and str(onerec_home / "artifacts") in proc.stdout
    stages = ["ingest", "validate"]
    assert not (onerec_home / "artifacts" / "daily" / "2026-01-01" / stages_for("daily")[2].name).exists()
    client, exp = _client(onerec_home)
    runs = client.search_runs([exp], max_results=100)
    parents = [r for r in runs if r.data.tags[tracking.TAG_STAGE] == "_pipeline"]
    assert sorted(r.data.tags[tracking.TAG_DATE] for r in parents) == ["2026-01-01", "2026-01-02"]
    for parent in parents:
        date = parent.data.tags[tracking.TAG_DATE]
        children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        assert sorted(r.data.tags[tracking.TAG_STAGE] for r in children) == sorted(stages)
        for child in children:
            assert child.data.tags[tracking.TAG_RUN_KEY] == f"daily/{date}"
            assert child.data.tags[tracking.TAG_CODE] and child.info.status == "FINISHED"
            manifest = json.loads((onerec_home / "artifacts" / "daily" / date / child.data.tags[tracking.TAG_STAGE]
                                   / "manifest.json").read_text())
            assert manifest["mlflow_run_id"] == child.info.run_id
        ingest = next(r for r in children if r.data.tags[tracking.TAG_STAGE] == "ingest")
        names = sorted(d.dataset.name for d in ingest.inputs.dataset_inputs)
        assert names == [f"impressions/{date}", f"items/{date}", f"users/{date}"]
    # validate's manifest depends on ingest's outputs: lineage is by content digest
    v = json.loads((onerec_home / "artifacts/daily/2026-01-02/validate/manifest.json").read_text())
    assert set(v["input_digests"]) == {"ingest", "external:history:2026-01-01"}


def test_a_retry_reuses_the_failed_run(onerec_home):
    run_cli("run", "ingest", "--date", "2026-01-01", "--config", DEBUG_CONFIG, check=True)
    failed = run_cli("run", "validate", "--date", "2026-01-01", "--config", DEBUG_CONFIG,
                     env={"ONEREC_FAULT": "validate:before_commit:raise"})
    assert failed.returncode == 1
    client, exp = _client(onerec_home)
    flt = f"tags.`{tracking.TAG_STAGE}` = 'validate'"
    (first,) = client.search_runs([exp], flt)
    assert first.info.status == "FAILED"
    run_cli("run", "validate", "--date", "2026-01-01", "--config", DEBUG_CONFIG, check=True)
    (again,) = client.search_runs([exp], flt)          # still one run: the retry reused it
    assert again.info.run_id == first.info.run_id and again.info.status == "FINISHED"


@pytest.mark.skipif(not (SHARED_DATA / "kuairand_pure_partial").is_dir(), reason="needs ../shared/data")
def test_real_kuairand_days_pass_the_gate(onerec_home):
    proc = run_cli("pipeline", "run", "--start", "2022-04-25", "--end", "2022-04-26", "--until", "validate",
                   "--config", "configs/kuairand.yaml", "--set", f"data.path={SHARED_DATA / 'kuairand_pure_partial'}")
    assert proc.returncode == 0, proc.stderr
    m = json.loads((onerec_home / "artifacts/daily/2022-04-26/validate/manifest.json").read_text())
    assert m["metrics"]["impressions"] > 10_000 and m["metrics"]["items"] == 7_583
    ingest = json.loads((onerec_home / "artifacts/daily/2022-04-26/ingest/manifest.json").read_text())
    assert ingest["metrics"]["duplicates_dropped"] > 0   # the real log repeats events; dedupe is recorded
    assert ingest["metrics"]["impressions"] == m["metrics"]["impressions"]
