"""The reward model's next-day AUC on the synthetic world, against what the world itself allows.

    .venv/bin/python benchmarks/reward_model_auc.py [--home /tmp/onerec_daily_loop] [--days 7]
                                                    [--config configs/demo.yaml] [--set key=value ...]

Runs (or reuses) the same pipeline as benchmarks/daily_loop.py. For each day D from day 2 on, the reward_model
stage has scored the reward model trained up to D-1 on D's exposures (`next_day_auc_<task>` in its metrics). Next to
it, on the same rows, two references computed from the world's latent truth (onerec.data.synthetic.WorldSimulator):
- oracle: the true affinity a = 4<u, v> + quality of (user, item), the quantity the flags are drawn from (-a for a
  dislike). No model can beat it on average; it is the ceiling.
- history bound: what a model that knew every item's true latent vector and quality but had to infer the user from
  the positive-history pathway could reach: 4 <mean v over the user's positive history, v> + quality.
The reward model sees items only through hashed ids and semantic IDs, and the user only through that history, so
the gap to the history bound measures what the item side (ids, SIDs) fails to carry.
Writes benchmarks/results/reward_model_auc.{json,md,png}; the plot is also logged to MLflow.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from daily_loop import run_pipeline  # noqa: E402  (benchmarks/ is on sys.path: the script's own folder)
from publish import publish  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
FLAGS = ("like", "follow", "comment", "forward", "dislike")


def references(world, table) -> dict:
    """AUC of the oracle and of the history bound per flag on one day's samples."""
    from onerec.reward_model import auc

    users, items = table["user_id"].to_numpy(), table["item_id"].to_numpy()
    ts = table["ts"].to_numpy()
    a = world.affinity(users, items, ts)
    V, quality, _, _ = world._latent(world._day(ts))
    hist = table["pos_item_id"].to_pylist()
    u_hat = np.stack([V[np.asarray(h, np.int64)].mean(0) if h else np.zeros(V.shape[1]) for h in hist])
    bound = 4 * (u_hat * V[items]).sum(1) + quality[items]
    out = {}
    for f in FLAGS:
        y = np.nan_to_num(table[f].to_numpy(zero_copy_only=False).astype(float)) > 0
        sign = -1.0 if f == "dislike" else 1.0
        out[f] = {"oracle": auc(y, sign * a), "history_bound": auc(y, sign * bound), "positive_rate": float(y.mean())}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--home", default="/tmp/onerec_daily_loop")
    ap.add_argument("--config", default=str(REPO / "configs" / "demo.yaml"))
    ap.add_argument("--start", default="2026-01-01")
    ap.add_argument("--days", type=int, default=7)
    ap.add_argument("--set", action="append", default=[], help="config override passed to the pipeline")
    ap.add_argument("--out", default=str(RESULTS / "reward_model_auc.json"))
    args = ap.parse_args()
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from onerec.config import load_config, resolved
    from onerec.data.synthetic import WorldSimulator
    from onerec.samples import SidTable, with_known_target
    from onerec.store import StageDir, open_store

    t0 = time.perf_counter()
    home = Path(args.home)
    start = dt.date.fromisoformat(args.start)
    days = [(start + dt.timedelta(days=i)).isoformat() for i in range(args.days)]
    pipeline = run_pipeline(home, args.config, days[0], days[-1], args.set)
    cfg = resolved(load_config(args.config, args.set))
    if cfg["data"]["source"] != "synthetic":
        print(f"reward_model_auc: needs data.source synthetic (the world's truth), got {cfg['data']['source']!r}",
              file=sys.stderr)
        return 2
    world = WorldSimulator(**(cfg["data"].get("options") or {}))
    store = open_store(str(home / "artifacts"))
    per_day = {}
    for day in days[1:]:
        rm, feats, tok = (StageDir(store, "daily", day, s) for s in ("reward_model", "features", "tokenize"))
        if not (rm.is_done() and feats.is_done() and tok.is_done()):
            print(f"{day}: reward_model not done, skipped", flush=True)
            continue
        metrics = json.loads(rm.read_bytes("metrics.json"))["metrics"]
        if "next_day_auc_like" not in metrics:   # the codebook changed: no next-day score that day
            continue
        # the rows the stage scored: D's samples whose item has a semantic ID
        table = with_known_target(feats.read_table("samples"), SidTable.from_table(tok.read_table("sids")))
        ref = references(world, table)
        per_day[day] = {f: {"reward_model": metrics.get(f"next_day_auc_{f}", float("nan")), **ref[f]} for f in FLAGS}
        per_day[day]["q"] = {"reward_model": metrics.get("next_day_auc_q", float("nan"))}
        print(day, json.dumps({f: {k: round(v, 3) for k, v in m.items()} for f, m in per_day[day].items()}), flush=True)
    if not per_day:
        print("reward_model_auc: no day with a next-day reward-model score", file=sys.stderr)
        return 2

    mean = lambda f, k: float(np.nanmean([per_day[d][f].get(k, np.nan) for d in per_day]))  # noqa: E731
    lines = ["Next-day AUC of the reward model (trained up to D-1, scored on D's exposures) against the world's "
             "references on the same rows, mean over days " + f"{min(per_day)}..{max(per_day)}", "",
             "| task | reward model | history bound | oracle | positive rate |", "|---|---|---|---|---|"]
    for f in FLAGS:
        lines.append(f"| {f} | {mean(f, 'reward_model'):.3f} | {mean(f, 'history_bound'):.3f} | "
                     f"{mean(f, 'oracle'):.3f} | {mean(f, 'positive_rate'):.4f} |")
    lines.append(f"| q > 0.75 | {mean('q', 'reward_model'):.3f} | - | - | - |")
    lines += ["", "| day | like: reward model | like: history bound | like: oracle |", "|---|---|---|---|"]
    lines += [f"| {d} | {m['like']['reward_model']:.3f} | {m['like']['history_bound']:.3f} | {m['like']['oracle']:.3f} |"
              for d, m in per_day.items()]
    table = "\n".join(lines) + "\n"

    fig, ax = plt.subplots(figsize=(8, 4))
    x = list(per_day)
    for k, style in (("reward_model", "o-"), ("history_bound", "s--"), ("oracle", "^:")):
        ax.plot([d[5:] for d in x], [per_day[d]["like"][k] for d in x], style, label=f"like: {k.replace('_', ' ')}")
    ax.axhline(0.6, color="grey", lw=0.8, label="issue #20 bar (0.6)")
    ax.set_ylabel("next-day AUC")
    ax.set_xlabel("day scored")
    ax.set_title("Reward model vs the world's references")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    result = {"command": " ".join([".venv/bin/python", "benchmarks/reward_model_auc.py", *sys.argv[1:]]),
              "pipeline": pipeline, "per_day": per_day,
              "mean": {f: {k: mean(f, k) for k in ("reward_model", "history_bound", "oracle")} for f in FLAGS},
              "args": vars(args), "total_s": round(time.perf_counter() - t0, 1),
              "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count()}}
    png = publish(args.out, result, table, fig, home, {"days": args.days, "config": args.config},
                  [{f"{f}.{k}": mean(f, k) for f in FLAGS for k in ("reward_model", "history_bound", "oracle")}])
    print(table)
    print(f"wrote {args.out} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
