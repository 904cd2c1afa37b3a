"""The pretrain stage through the real CLI on the debug world: weights, MLflow curves, warm start, kill -9 resume."""
from __future__ import annotations

import json

from support import DEBUG_CONFIG, run_cli

# configs/debug.yaml trains the debug preset: 20 steps, a checkpoint every 10, a loss logged every 5


def _manifest(home, date, stage="pretrain"):
    return json.loads((home / "artifacts" / "daily" / date / stage / "manifest.json").read_text())


def test_pretrain_daily_warm_start_and_exact_resume_after_kill(pipeline_home):
    # day 1 and day 2 went through the whole pipeline (upstream stages included) in `debug_pipeline`
    onerec_home = pipeline_home
    day1, day2 = _manifest(onerec_home, "2026-01-01"), _manifest(onerec_home, "2026-01-02")
    assert day1["metrics"]["warm_start"] == "scratch"
    assert day2["metrics"]["warm_start"] == "daily/2026-01-01"            # continual training
    assert "external:warm_start" in day2["input_digests"]
    assert set(day2["outputs"]) == {"model.safetensors", "model.json", "train.json"}
    train = json.loads((onerec_home / "artifacts/daily/2026-01-02/pretrain/train.json").read_text())
    assert len(train["losses"]) == 20 and all(x == x for x in train["losses"])

    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(f"sqlite:///{onerec_home / 'mlflow.db'}")
    history = MlflowClient().get_metric_history(day2["mlflow_run_id"], "loss")
    assert [m.step for m in history] == list(range(5, 21, 5))
    metrics = MlflowClient().get_run(day2["mlflow_run_id"]).data.metrics
    assert metrics["tokens_per_s"] > 0 and 0 < metrics["mfu"] < 1

    # kill -9 at step 15 (checkpoint at 10), rerun: resumes from 10, same weights as the uninterrupted run
    uninterrupted = day2["outputs"]["model.safetensors"]["sha256"]
    killed = run_cli("run", "pretrain", "--date", "2026-01-02", "--config", DEBUG_CONFIG, "--force",
                     env={"ONEREC_FAULT": "pretrain:step15:kill"})
    assert killed.returncode == -9
    assert not (onerec_home / "artifacts/daily/2026-01-02/pretrain/_SUCCESS").exists()
    run_cli("run", "pretrain", "--date", "2026-01-02", "--config", DEBUG_CONFIG, check=True)
    resumed = _manifest(onerec_home, "2026-01-02")
    assert resumed["metrics"]["resumed_from_step"] == 10
    assert resumed["outputs"]["model.safetensors"]["sha256"] == uninterrupted
    # the job's checkpoints are gone once the weights are committed
    assert not list((onerec_home / "artifacts" / "_scratch").rglob("COMPLETE"))
    again = run_cli("run", "pretrain", "--date", "2026-01-02", "--config", DEBUG_CONFIG, check=True)
    assert "up to date" in again.stdout
