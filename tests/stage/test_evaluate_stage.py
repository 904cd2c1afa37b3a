"""The evaluate stage through the real CLI: yesterday's model scored on today, next to the registry champion."""
from __future__ import annotations

import json

from support import DEBUG_CONFIG, run_cli


def test_evaluate_scores_the_previous_days_model_and_the_champion(pipeline_home):
    import mlflow
    from mlflow import MlflowClient

    from onerec import model_registry
    from onerec.store import StageDir, open_store

    home = pipeline_home
    uri = f"sqlite:///{home / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    if mlflow.get_experiment_by_name("onerec") is None:
        mlflow.create_experiment("onerec", artifact_location=(home / "mlartifacts").as_uri())
    # day 1's model becomes the champion (the promotion policy is issue #9; here the registry API does it)
    store = open_store(str(home / "artifacts"))
    bundle = model_registry.write_bundle(home / "bundle", StageDir(store, "daily", "2026-01-01", "pretrain"),
                                         StageDir(store, "daily", "2026-01-01", "tokenize"))
    version = model_registry.register(bundle, "onerec", tracking_uri=uri)
    model_registry.set_alias("onerec", "champion", version, tracking_uri=uri)

    run_cli("run", "evaluate", "--date", "2026-01-02", "--config", DEBUG_CONFIG, check=True)
    out = home / "artifacts/daily/2026-01-02/evaluate"
    manifest = json.loads((out / "manifest.json").read_text())
    m = manifest["metrics"]
    # leak-free: the model trained strictly before D is scored on D
    assert m["evaluated_model"] == "daily/2026-01-01/pretrain" and m["same_day"] == 0
    assert manifest["input_digests"]["external:champion"] == f"onerec/{version}"
    assert "external:model" in manifest["input_digests"]
    assert m["users"] > 10 and m["invalid_rate"] == 0.0
    for k in (1, 5, 10, 50):
        assert 0 <= m[f"recall_at_{k}"] <= m[f"hr_at_{k}"] <= 1 and 0 <= m[f"ndcg_at_{k}"] <= 1
    assert m["recall_at_50"] >= m["recall_at_10"] >= m["recall_at_1"]
    assert 0 < m["coverage_at_50"] <= 1 and 0 <= m["cold_share_at_50"] <= 1
    # the champion is the same weights on the same users: identical metrics
    assert m["champion_recall_at_50"] == m["recall_at_50"] and m["champion_users"] == m["users"]
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["champion"]["version"] == f"onerec/{version}"
    assert "| recall_at_10 |" in (out / "comparison.md").read_text()

    run = MlflowClient().get_run(manifest["mlflow_run_id"])
    assert run.data.tags["onerec.eval_model"] == "daily/2026-01-01/pretrain"
    assert run.data.tags["onerec.eval_same_day"] == "false"
    assert run.data.metrics["ndcg_at_10"] == m["ndcg_at_10"]
    artifacts = {a.path for a in MlflowClient().list_artifacts(run.info.run_id, "evaluate")}
    assert {"evaluate/comparison.json", "evaluate/comparison.md"} <= artifacts

    # same inputs, same config: a no-op
    again = run_cli("run", "evaluate", "--date", "2026-01-02", "--config", DEBUG_CONFIG, check=True)
    assert "up to date" in again.stdout

