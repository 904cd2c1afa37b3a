"""Post-training on KuaiRand: SFT alone vs SFT + RL (GBPO, duration-aware reward), and GBPO vs ECPO vs GRPO curves.

    .venv/bin/python benchmarks/post_training.py [--home /tmp/onerec_bench_kr] [--train-days 4] [--test-days 2]
                                                 [--sft-steps 100] [--rl-steps 100] [--max-users 1000]

Data: the pipeline's own stages on configs/kuairand.yaml (the data path is read from there): ingest ... pretrain
run through the real CLI into `--home` (reused when already there): ingest .. tokenize for every day (3 x 256
codebooks, frozen after the first day), pretrain (--pretrain-steps) for the first day only. Protocol:
  train days D1..Dn (n = --train-days, from 2022-04-25): SFT continues pretrain(D1) on all samples of D1..Dn for
  --sft-steps; then, from that SFT model, --rl-steps more steps on the same days with each algorithm (source
  `feedback`: logged exposures, duration-aware advantages, + the generation loss), and a control that continues
  SFT for the same extra steps (same data, same budget, no RL term).
  held-out days Dn+1..: next-day protocol (onerec.evaluation.next_day: each user's context before the day,
  truth = the user's positive items of the day), trie-constrained beam search, top 10.
Metrics: Recall/NDCG@10 overall; the same with truth = long-view items only (play >= 18 s or >= the duration,
KuaiRand's rule); mean duration-aware quantile q of the hit items (the q of the user's impression of a
recommended item that they did watch on the held-out day: does the policy find what users watch long?).
Curves: loss, RL loss and gradient norm (before clipping) per step for GBPO / ECPO / GRPO over the same batches:
benchmarks/results/post_training.png, also logged to MLflow (experiment onerec-benchmarks in --home).
Writes benchmarks/results/post_training.json and prints a Markdown table.
"""
from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from onerec import evaluation, rl  # noqa: E402
from onerec.item.trie import SidTrie  # noqa: E402
from onerec.posttrain import RLObjective, collate_rl, items_per_sid  # noqa: E402
from onerec.samples import SidTable, collate, with_known_target  # noqa: E402
from onerec.store import StageDir, open_store  # noqa: E402
from onerec.train import ParquetStream, TrainConfig, train  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
CONFIG = REPO / "configs" / "kuairand.yaml"
START = dt.date(2022, 4, 25)


def ensure_pipeline(home: Path, days: list[str], pretrain_steps: int) -> None:
    """ingest .. tokenize for every day, pretrain for the first (no-ops when already done)."""
    env = {**os.environ, "ONEREC_HOME": str(home), "SPARK_LOCAL_IP": "127.0.0.1"}
    sets = ["--config", str(CONFIG), "--set", f"pretrain.train.max_steps={pretrain_steps}",
            "--set", "tokenize.codebook_size=256"]
    for cmd in (["pipeline", "run", "--start", days[0], "--end", days[-1], "--until", "tokenize", *sets],
                ["run", "pretrain", "--date", days[0], *sets]):
        print("onerec", " ".join(cmd), flush=True)
        subprocess.run([sys.executable, "-m", "components.cli", *cmd], cwd=REPO, env=env, check=True,
                       stdout=subprocess.DEVNULL)


def load_model(d: StageDir):
    sys.path.insert(0, str(REPO))
    from components.pretrain import load_model as lm

    return lm(d)


def train_files(store, days, sids, tmp) -> list[str]:
    files = []
    for day in days:
        t = with_known_target(StageDir(store, "daily", day, "features").read_table("samples"), sids)
        f = f"{tmp}/{day}.parquet"
        pq.write_table(t, f, row_group_size=2048)
        files.append(f)
    return files


def tcfg(steps, lr, log_every=1):
    return TrainConfig(max_steps=steps, batch_size=64, lr=lr, warmup_steps=min(10, steps // 5), log_every=log_every,
                       ckpt_every=10 ** 9, seed=0)


def run_sft(model, files, sids, steps, lr):
    mcfg = model.cfg
    stream = ParquetStream(files, 64, lambda t: collate(t, mcfg, sids), seed=0)
    out = train(model, stream, tcfg(steps, lr, log_every=10), None, progress=True)
    model.load_state_dict(out["state_dict"])
    return model, out


def run_rl(model, files, sids, spec, steps, lr, trie):
    """spec: an algorithm, optionally with the tie rule of the shaping: "gbpo" (rank ties) or "gbpo:strict"."""
    algorithm, _, ties = spec.partition(":")
    mcfg = model.cfg
    rcfg = rl.RLConfig(algorithm=algorithm, source="feedback", ties=ties or "rank")
    counts = items_per_sid(sids, len(mcfg.codebook_sizes))
    obj = RLObjective(model, rcfg, trie, sids)
    stream = ParquetStream(files, 64, lambda t: collate_rl(t, mcfg, sids, counts, rcfg), seed=1)
    curves = {}

    def on_log(step, m):
        for k, v in {**m, **obj.pop_stats()}.items():
            curves.setdefault(k, []).append(v)

    out = train(obj, stream, tcfg(steps, lr), None, on_log=on_log, progress=True)
    model.load_state_dict({k.removeprefix("policy."): v for k, v in out["state_dict"].items()})
    return model, curves


def long_view(t: pa.Table) -> np.ndarray:
    play = pc.fill_null(t["play_time_ms"], 0).to_numpy(zero_copy_only=False).astype(float)
    dur = pc.fill_null(t["duration_ms"], 0).to_numpy(zero_copy_only=False).astype(float)
    return (play >= 18_000) | ((dur > 0) & (play >= dur))


def eval_day(models: dict, store, day, max_users, beam):
    tok = StageDir(store, "daily", day, "tokenize")
    trie = SidTrie.from_bytes(tok.read_bytes("trie.safetensors"))
    sids = SidTable.from_table(tok.read_table("sids"))
    samples = StageDir(store, "daily", day, "features").read_table("samples")
    contexts, truths = evaluation.next_day(samples, "positive")
    if contexts.num_rows > max_users:
        keep = np.sort(np.random.default_rng(0).choice(contexts.num_rows, max_users, replace=False))
        contexts, truths = contexts.take(pa.array(keep)), [truths[i] for i in keep]
    # per (user, item) of the day: long view? and q (max over the user's impressions of that item)
    users = samples["user_id"].to_numpy()
    items = samples["item_id"].to_numpy()
    q = pc.cast(samples["q"], pa.float64()).to_numpy(zero_copy_only=False)
    lv = long_view(samples)
    qmap, lvset = {}, set()
    for u, i, qq, l in zip(users, items, q, lv):
        if np.isfinite(qq):
            qmap[(u, i)] = max(qmap.get((u, i), 0.0), qq)
        if l:
            lvset.add((u, i))
    cusers = contexts["user_id"].to_numpy()
    lv_truths = [{i for i in t if (u, i) in lvset} for u, t in zip(cusers, truths)]
    out = {}
    for name, model in models.items():
        ranking = evaluation.rank(model, trie, sids, contexts, 10, beam, batch_size=64)
        m = evaluation.ranking_metrics(ranking.items, truths, ks=(10,))
        has = [j for j, t in enumerate(lv_truths) if t]
        mlv = evaluation.ranking_metrics([ranking.items[j] for j in has], [lv_truths[j] for j in has], ks=(10,))
        hit_q = [qmap[(u, i)] for u, recs, t in zip(cusers, ranking.items, truths) for i in recs[:10]
                 if i in t and (u, i) in qmap]
        watched_q = [qmap[(u, i)] for u, recs in zip(cusers, ranking.items) for i in recs[:10] if (u, i) in qmap]
        out[name] = {"recall_at_10": m["recall_at_10"], "ndcg_at_10": m["ndcg_at_10"],
                     "long_view_recall_at_10": mlv["recall_at_10"], "long_view_ndcg_at_10": mlv["ndcg_at_10"],
                     "hit_mean_q": float(np.mean(hit_q)) if hit_q else float("nan"), "hits_with_q": len(hit_q),
                     "exposed_mean_q": float(np.mean(watched_q)) if watched_q else float("nan"),
                     "users": len(truths), "long_view_users": len(has)}
    return out


def plot(curves: dict, path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for algo, c in curves.items():
        axes[0].plot(c["grad_norm"], label=algo)
        axes[1].plot(c["rl_loss_feedback"], label=algo)
        axes[2].plot(c["loss"], label=algo)
    for ax, title in zip(axes, ("gradient norm (before clipping)", "RL loss (feedback)", "total loss (RL + generation)")):
        ax.set(title=title, xlabel="step")
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0].set_yscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return fig


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--home", default="/tmp/onerec_bench_kr")
    ap.add_argument("--train-days", type=int, default=4)
    ap.add_argument("--test-days", type=int, default=2)
    ap.add_argument("--pretrain-steps", type=int, default=100)
    ap.add_argument("--sft-steps", type=int, default=100)
    ap.add_argument("--rl-steps", type=int, default=100)
    ap.add_argument("--sft-lr", type=float, default=2e-4)
    ap.add_argument("--rl-lr", type=float, default=2e-4)
    ap.add_argument("--algorithms", default="gbpo,ecpo,grpo,gbpo:strict",
                    help="algorithm[:ties]; ties rank (default) or strict (Sec. 3.1.1 as printed)")
    ap.add_argument("--max-users", type=int, default=500)
    ap.add_argument("--beam", type=int, default=32)
    ap.add_argument("--out", default=str(RESULTS / "post_training.json"))
    args = ap.parse_args()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    t0, load0 = time.perf_counter(), os.getloadavg()
    home = Path(args.home)
    days = [(START + dt.timedelta(days=i)).isoformat() for i in range(args.train_days + args.test_days)]
    train_days, test_days = days[:args.train_days], days[args.train_days:]
    ensure_pipeline(home, days, args.pretrain_steps)
    t_pipeline = time.perf_counter() - t0
    store = open_store(str(home / "artifacts"))
    tok = StageDir(store, "daily", train_days[-1], "tokenize")
    sids = SidTable.from_table(tok.read_table("sids"))
    trie = SidTrie.from_bytes(tok.read_bytes("trie.safetensors"))
    pre, meta = load_model(StageDir(store, "daily", train_days[0], "pretrain"))
    timings = {"pipeline_s": round(t_pipeline, 1)}
    with tempfile.TemporaryDirectory() as tmp:
        files = train_files(store, train_days, sids, tmp)
        n_train = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
        t = time.perf_counter()
        sft, _ = run_sft(pre, files, sids, args.sft_steps, args.sft_lr)
        timings["sft_s"] = round(time.perf_counter() - t, 1)
        models, curves = {"SFT": copy.deepcopy(sft)}, {}
        t = time.perf_counter()
        models[f"SFT +{args.rl_steps} steps (control)"], _ = run_sft(copy.deepcopy(sft), files, sids, args.rl_steps, args.rl_lr)
        timings["control_s"] = round(time.perf_counter() - t, 1)
        for algo in args.algorithms.split(","):
            t = time.perf_counter()
            models[f"SFT + RL {algo.upper()}"], curves[algo] = run_rl(copy.deepcopy(sft), files, sids, algo,
                                                                      args.rl_steps, args.rl_lr, trie)
            timings[f"rl_{algo.replace(':', '_')}_s"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    per_day = {day: eval_day(models, store, day, args.max_users, args.beam) for day in test_days}
    timings["eval_s"] = round(time.perf_counter() - t, 1)
    keys = ("recall_at_10", "ndcg_at_10", "long_view_recall_at_10", "long_view_ndcg_at_10", "hit_mean_q", "exposed_mean_q")
    rows = []
    for name in models:
        r = {"model": name}
        for k in keys:
            vals = [per_day[d][name][k] for d in test_days if np.isfinite(per_day[d][name][k])]
            r[k] = float(np.mean(vals)) if vals else float("nan")
        rows.append(r)
    grad = {a: {"mean": float(np.mean(c["grad_norm"])), "max": float(np.max(c["grad_norm"])),
                "p95": float(np.percentile(c["grad_norm"], 95)),
                "rl_loss_last10": float(np.mean(c["rl_loss_feedback"][-10:])),
                "adv_pos_share": float(np.mean(c["adv_pos_share"])), "adv_neg_share": float(np.mean(c["adv_neg_share"])),
                "filtered_share": float(np.mean(c["filtered_share"]))} for a, c in curves.items()}
    RESULTS.mkdir(parents=True, exist_ok=True)
    fig = plot(curves, RESULTS / "post_training.png")
    table = markdown(rows, grad)
    load1 = os.getloadavg()
    result = {"command": " ".join([".venv/bin/python", "benchmarks/post_training.py", *sys.argv[1:]]),
              "train_days": train_days, "test_days": test_days, "train_samples": n_train,
              "model_config": meta["model_config"], "args": vars(args), "rows": rows, "per_day": per_day,
              "gradients": grad, "curves": curves, "timings": timings, "total_s": round(time.perf_counter() - t0, 1),
              "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                          "load_average_start": load0, "load_average_end": load1},
              "markdown": table}
    Path(args.out).write_text(json.dumps(result, indent=2, default=float))
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{home / 'mlflow.db'}")
    mlflow.set_experiment("onerec-benchmarks")
    with mlflow.start_run(run_name="post_training"):
        mlflow.log_params({"train_days": ",".join(train_days), "test_days": ",".join(test_days),
                           "sft_steps": args.sft_steps, "rl_steps": args.rl_steps})
        for r in rows:
            slug = r["model"].split("(")[0].strip().replace(" ", "_").replace("+", "plus").replace(":", "_")
            mlflow.log_metrics({f"{slug}.{k}": v for k, v in r.items() if k != "model" and np.isfinite(v)})
        mlflow.log_figure(fig, "post_training.png")
        mlflow.log_text(table, "post_training.md")
    print(f"\nKuaiRand, train {train_days[0]}..{train_days[-1]} ({n_train} samples), held out {', '.join(test_days)}; "
          f"{args.sft_steps} SFT + {args.rl_steps} RL steps x 64; total {result['total_s']} s "
          f"(pipeline {timings['pipeline_s']} s); load {load0[0]:.1f} -> {load1[0]:.1f}\n")
    print(table)
    print(f"wrote {args.out} and {RESULTS / 'post_training.png'}")
    return 0


def markdown(rows, grad) -> str:
    f = lambda x: "-" if not np.isfinite(x) else f"{x:.4f}"  # noqa: E731
    lines = ["| model | Recall@10 | NDCG@10 | long-view Recall@10 | long-view NDCG@10 | mean q of hits | mean q of watched recs |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {f(r['recall_at_10'])} | {f(r['ndcg_at_10'])} | {f(r['long_view_recall_at_10'])} | "
              f"{f(r['long_view_ndcg_at_10'])} | {f(r['hit_mean_q'])} | {f(r['exposed_mean_q'])} |" for r in rows]
    lines += ["", "| algorithm | grad norm mean | p95 | max | RL loss (last 10 steps) | A=+1 share | A=-1 share | filtered |",
              "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {a.upper()} | {g['mean']:.3f} | {g['p95']:.3f} | {g['max']:.3f} | {g['rl_loss_last10']:.4f} | "
              f"{g['adv_pos_share']:.3f} | {g['adv_neg_share']:.4f} | {g['filtered_share']:.3f} |" for a, g in grad.items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
