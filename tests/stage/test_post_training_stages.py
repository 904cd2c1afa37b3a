"""sft, reward_model and rl through the real CLI on the debug world, and evaluate picking the post-trained model.

One `pipeline run --until rl` over day 1 (upstream stages are up to date: no-ops) runs sft -> reward_model -> rl
in one process; configs/debug.yaml keeps them to a few steps (rl: hybrid = logged feedback + reward-model
rollouts + the format reward)."""
from __future__ import annotations

import json

from support import DEBUG_CONFIG, run_cli

DAY1, DAY2 = "2026-01-01", "2026-01-02"


def _manifest(home, date, stage):
    return json.loads((home / "artifacts" / "daily" / date / stage / "manifest.json").read_text())


def test_sft_reward_model_rl_then_evaluate_prefers_rl(pipeline_home):
    import mlflow
    from mlflow import MlflowClient

    home = pipeline_home
    run_cli("pipeline", "run", "--start", DAY1, "--until", "rl", "--config", DEBUG_CONFIG, check=True)

    sft = _manifest(home, DAY1, "sft")
    assert sft["metrics"]["init"] == f"pretrain {DAY1}" and sft["metrics"]["steps"] == 6
    m = sft["metrics"]   # RSFT (debug: on) dropped the bottom half of the day's sessions
    assert m["rsft_sessions_dropped"] == m["rsft_sessions"] // 2 and 0 < m["rsft_rows_kept"] < m["rsft_rows"]
    assert {"model.safetensors", "model.json", "train.json"} <= set(sft["outputs"])

    rm = _manifest(home, DAY1, "reward_model")["metrics"]
    for task in ("like", "q"):                      # first day: chronological holdout of D
        assert 0 <= rm[f"holdout_auc_{task}"] <= 1 and rm[f"holdout_logloss_{task}"] > 0

    rl = _manifest(home, DAY1, "rl")
    r = rl["metrics"]
    assert r["algorithm"] == "gbpo" and r["source"] == "hybrid" and r["steps"] == 6
    assert r["n_feedback"] == 32 and r["n_rollout"] == 4 * 3 and 0 <= r["filtered_share"] <= 1
    assert r["grad_norm"] == r["grad_norm"] and r["final_loss"] == r["final_loss"]   # not NaN
    assert set(rl["input_digests"]) >= {"sft", "reward_model", "features", "tokenize"}
    mlflow.set_tracking_uri(f"sqlite:///{home / 'mlflow.db'}")
    client = MlflowClient()
    metrics = client.get_run(rl["mlflow_run_id"]).data.metrics
    for k in ("grad_norm", "adv_mean", "adv_pos_share", "adv_neg_share", "filtered_share", "n_feedback",
              "n_rollout", "n_format", "rollout_pscore_mean", "rl_loss_feedback", "rl_loss_rollout"):
        assert k in metrics, k
    # per logged step (the contract adds the final value at step 0)
    assert sorted(x.step for x in client.get_metric_history(rl["mlflow_run_id"], "grad_norm") if x.step) == [3, 6]
    assert "rl/curves.png" in {a.path for a in client.list_artifacts(rl["mlflow_run_id"], "rl")}

    # evaluate(D2) scores the most post-trained model of D1
    run_cli("run", "evaluate", "--date", DAY2, "--config", DEBUG_CONFIG, "--set", "evaluate.check_unconstrained=false",
            check=True)
    ev = _manifest(home, DAY2, "evaluate")
    assert ev["metrics"]["evaluated_model"] == f"daily/{DAY1}/rl" and ev["metrics"]["invalid_rate"] == 0.0

    # reward_model(D2): next-day metrics of reward_model(D1) on D2
    run_cli("run", "reward_model", "--date", DAY2, "--config", DEBUG_CONFIG, check=True)
    rm2 = _manifest(home, DAY2, "reward_model")["metrics"]
    assert 0 <= rm2["next_day_auc_like"] <= 1 and "holdout_auc_like" not in rm2


def test_bad_rl_config_is_bad_input():
    from types import SimpleNamespace

    import pytest

    from components.rl import rl_config
    from onerec.errors import BadInput

    for section, words in (({"algorithm": "ppo9"}, "rl.algorithm"), ({"nope": 1}, "unknown rl option")):
        with pytest.raises(BadInput, match=words):
            rl_config(SimpleNamespace(section=section))


def test_every_rl_algorithm_runs_through_the_stage_on_beam_groups(pipeline_home):
    """gbpo (token and sequence ratio, with checkpoint selection), ecpo, grpo and dpo, each through `onerec run rl`
    with the default source (beam groups): real groups formed, the KL anchor measured, DPO pairs built without a
    reward model, and the selected checkpoint recorded (and resumable: best.json lives in scratch)."""
    home = pipeline_home
    run_cli("pipeline", "run", "--start", DAY1, "--until", "sft", "--config", DEBUG_CONFIG, check=True)
    run_cli("run", "reward_model", "--date", DAY1, "--config", DEBUG_CONFIG, check=True)
    base = ["--config", DEBUG_CONFIG, "--set", "rl.source=beam", "--set", "rl.group_size=4", "--set", "rl.rollout_users=4"]
    for algo, extra in (("gbpo", ["rl.select_every=3"]), ("gbpo", ["rl.ratio=sequence"]), ("ecpo", []), ("grpo", []),
                        ("dpo", [])):
        sets = [x for e in extra for x in ("--set", e)]
        run_cli("run", "rl", "--date", DAY1, *base, "--set", f"rl.algorithm={algo}", *sets, check=True)
        man = _manifest(home, DAY1, "rl")
        r = man["metrics"]
        assert r["algorithm"] == algo and r["source"] == "beam" and r["steps"] == 6, (algo, r)
        assert r["kl_ref"] >= 0 and r["grad_norm"] == r["grad_norm"]
        if algo == "dpo":
            assert r["n_dpo_pairs"] > 0 and "rl_loss_dpo" in r
        else:
            assert r["n_groups"] > 0 and r["rl_loss_beam"] == r["rl_loss_beam"]
        train = json.loads((home / "artifacts" / "daily" / DAY1 / "rl" / "train.json").read_text())
        assert train["rl_config"]["algorithm"] == algo
        if "rl.select_every=3" in extra:
            steps = [h["step"] for h in train["selection"]]
            assert steps == [0, 3, 6] and r["selected_step"] in steps
            best = max(train["selection"], key=lambda h: (h["score"], -h["step"]))
            assert r["selected_score"] == best["score"] and 0 <= best["hit_all"] <= 1
            assert not list((home / "artifacts" / "_scratch").rglob("best.json"))     # scratch cleared on success
        else:
            assert train["selection"] is None and "selected_step" not in r
