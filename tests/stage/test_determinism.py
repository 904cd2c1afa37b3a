"""The same days twice from the same inputs: the same models, byte for byte, and the same promotion decisions.

Two private copies of the debug pipeline (built through pretrain) each run every post-training stage of both days
through the real CLI: sft -> reward_model -> rl (beam rollouts, hybrid reward-model samples, the format reward:
every RNG they draw from is seeded) -> evaluate -> online_validate (the world scores the A/B) -> promote. On CPU
with the same thread count the two runs must agree on every weight file and on every decision and metric that
decides; only run ids, timestamps and the A/B's measured latencies may differ.
"""
from __future__ import annotations

import json

from support import DEBUG_CONFIG, copy_home, run_cli

DAYS = ("2026-01-01", "2026-01-02")
WEIGHTS = {"sft": "model.safetensors", "reward_model": "reward_model.safetensors", "rl": "model.safetensors"}
DECIDING = ("candidate", "decision", "version")


def _run(home):
    run_cli("pipeline", "run", "--start", DAYS[0], "--end", DAYS[-1], "--config", DEBUG_CONFIG,
            env={"ONEREC_HOME": str(home)}, check=True)
    art = home / "artifacts" / "daily"
    weights = {(d, s): (art / d / s / f).read_bytes() for d in DAYS for s, f in WEIGHTS.items()}
    decisions = {d: json.loads((art / d / "promote" / "decision.json").read_text()) for d in DAYS}
    evaluated = {d: json.loads((art / d / "evaluate" / "manifest.json").read_text())["metrics"] for d in DAYS}
    blessed = {d: {k: v for k, v in json.loads((art / d / "online_validate" / "manifest.json").read_text())["metrics"]
                   .items() if "latency" not in k} for d in DAYS}      # wall-clock latency is the one thing that varies
    return weights, decisions, evaluated, blessed


def test_the_same_days_twice_give_the_same_models_and_promotion_decisions(pipeline_home, tmp_path):
    other = copy_home(pipeline_home, tmp_path / "second_home")
    first, second = _run(pipeline_home), _run(other)
    for key, data in first[0].items():
        assert data == second[0][key], f"{key}: model bytes differ between two runs of the same inputs"
    for day in DAYS:
        a, b = first[1][day], second[1][day]
        assert {k: a.get(k) for k in DECIDING} == {k: b.get(k) for k in DECIDING}, (day, a, b)
        assert a["decision"] in {"promoted", "unchanged", "rejected"}
        assert first[2][day] == second[2][day], day          # every offline metric, exactly
        assert first[3][day] == second[3][day], day          # the world-scored A/B, exactly
    assert first[1][DAYS[-1]]["candidate"] == f"daily/{DAYS[0]}/rl"   # day 2 judged day 1's RL model
