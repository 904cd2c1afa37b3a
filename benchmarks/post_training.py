"""Post-training on KuaiRand: pretrain vs SFT vs SFT + RL (every algorithm), over seeds, with 95% intervals.

    .venv/bin/python benchmarks/post_training.py [--home /tmp/onerec_bench_kr] [--train-days 4] [--test-days 2]
                                                 [--sft-steps 50] [--rl-steps 50] [--max-users 250] [--seeds 0,1,2]

Data: the pipeline's own stages on configs/kuairand.yaml (the data path is read from there): ingest ... pretrain
run through the real CLI into `--home` (reused when already there): ingest .. tokenize for every day (3 x 256
codebooks, frozen after the first day), pretrain (--pretrain-steps) for the first day only. Protocol:
  train days D1..Dn (n = --train-days, from 2022-04-25): SFT continues pretrain(D1) on the sft stage's samples (--sft-samples; positive by default) of D1..Dn for
  --sft-steps; then, from that SFT model, --rl-steps more steps on the same days with each RL spec
  `algorithm[:ratio][@source]` (default config: gbpo, token ratio, beam groups; + the generation loss and the KL
  anchor to the SFT model), and a control that continues SFT for the same extra steps (same data, same budget, no
  RL term). Every seed (--seeds) redraws SFT's and RL's batch order and initial RNG; pretrain is shared.
  held-out days Dn+1..: next-day protocol (onerec.evaluation.next_day: each user's context before the day,
  truth = the user's positive items of the day), trie-constrained beam search, top 10.
Metrics: Recall/NDCG@10 overall; the same with truth = long-view items only (play >= 18 s or >= the duration,
KuaiRand's rule); mean duration-aware quantile q of the hit items (the q of the user's impression of a
recommended item that they did watch on the held-out day: does the policy find what users watch long?).
Intervals: mean over seeds +- the 95% t-interval of the seeds' means; "vs SFT" is the paired relative difference
(same seed, same users). The bars of issue #20 are checked and printed.
Curves: loss, RL loss and gradient norm (before clipping) per step of every RL spec (seed 0):
the .png next to --out, also logged to MLflow (experiment onerec-benchmarks in --home).
Writes benchmarks/results/post_training.json and .md and prints the Markdown tables.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
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
from components.common import load_model  # noqa: E402
from onerec import evaluation, rl  # noqa: E402
from onerec.item.trie import SidTrie  # noqa: E402
from onerec.posttrain import RLObjective, collate_rl, items_per_sid  # noqa: E402
from onerec.samples import SidTable, collate, positive_rows, with_known_target  # noqa: E402
from onerec.store import StageDir, open_store  # noqa: E402
from onerec.train import ParquetStream, TrainConfig, train  # noqa: E402
from publish import publish  # noqa: E402  (benchmarks/publish.py: the script's own folder is on sys.path)

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


def train_files(store, days, sids, tmp, positive: bool, tag: str) -> list[str]:
    files = []
    for day in days:
        t = with_known_target(StageDir(store, "daily", day, "features").read_table("samples"), sids)
        t = positive_rows(t) if positive else t
        f = f"{tmp}/{day}.{tag}.parquet"
        pq.write_table(t, f, row_group_size=2048)
        files.append(f)
    return files


def tcfg(steps, lr, log_every=1, seed=0):
    return TrainConfig(max_steps=steps, batch_size=64, lr=lr, warmup_steps=min(10, steps // 5), log_every=log_every,
                       ckpt_every=10 ** 9, seed=seed)


def run_sft(model, files, sids, steps, lr, seed=0):
    mcfg = model.cfg
    stream = ParquetStream(files, 64, lambda t: collate(t, mcfg, sids), seed=seed)
    out = train(model, stream, tcfg(steps, lr, log_every=10, seed=seed), None, progress=True)
    model.load_state_dict(out["state_dict"])
    return model, out


def parse_spec(spec: str) -> dict:
    """`algorithm[:ratio][@source][+field=value...]` -> RLConfig fields (+ `samples`), e.g. gbpo, gbpo:sequence,
    dpo, gbpo@feedback, gbpo+rank_penalty=0+rl_weight=0.5, gbpo@feedback+samples=all."""
    head, *opts = spec.split("+")
    head, _, source = head.partition("@")
    algorithm, _, ratio = head.partition(":")
    out = {"algorithm": algorithm}
    if ratio:
        out["ratio"] = ratio
    if source:
        out["source"] = source
    from onerec.config import parse_set

    fields = {f.name for f in dataclasses.fields(rl.RLConfig)}
    for opt in opts:
        (key, *rest), value = parse_set(opt)       # the CLI's --set rule: YAML values (0.5, false, null)
        if rest or key not in fields | {"samples"}:
            raise SystemExit(f"spec {spec!r}: {opt.partition('=')[0]!r} is not an RLConfig field or samples")
        if key == "samples" and value not in ("positive", "all"):
            raise SystemExit(f"spec {spec!r}: samples must be positive or all")
        out[key] = value
    return out


def spec_config(spec: str) -> rl.RLConfig:
    """The rl stage's defaults (DEFAULTS["rl"], as `onerec run rl` reads them), then the spec's fields."""
    from types import SimpleNamespace

    from components.rl import rl_config
    from onerec.config import DEFAULTS

    return rl_config(SimpleNamespace(section={**DEFAULTS["rl"], **parse_spec(spec)}))


def run_rl(model, files, sids, spec, steps, lr, trie, seed=0):
    """From the SFT model, `steps` RL steps with the spec's RLConfig (the rl stage's otherwise); the SFT model is the
    frozen reference (KL anchor, DPO)."""
    mcfg = model.cfg
    rcfg = spec_config(spec)
    counts = items_per_sid(sids, len(mcfg.codebook_sizes))
    reference = copy.deepcopy(model).eval().requires_grad_(False)
    obj = RLObjective(model, rcfg, trie, sids, reference)
    stream = ParquetStream(files, 64, lambda t: collate_rl(t, mcfg, sids, counts, rcfg), seed=seed + 1)
    curves = {}

    def on_log(step, m):
        for k, v in {**m, **obj.pop_stats()}.items():
            curves.setdefault(k, []).append(v)

    out = train(obj, stream, tcfg(steps, lr, seed=seed + 1), None, on_log=on_log, progress=True)
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


def plot(curves: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for spec, c in curves.items():
        axes[0].plot(c["grad_norm"], label=spec)
        rl_key = next((k for k in ("rl_loss_beam", "rl_loss_dpo", "rl_loss_feedback") if k in c), None)
        if rl_key:
            axes[1].plot(c[rl_key], label=spec)
        axes[2].plot(c["loss"], label=spec)
    for ax, title in zip(axes, ("gradient norm (before clipping)", "RL loss", "total loss (RL + generation + KL)")):
        ax.set(title=title, xlabel="step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_yscale("log")
    fig.tight_layout()
    return fig


KEYS = ("recall_at_10", "ndcg_at_10", "long_view_recall_at_10", "long_view_ndcg_at_10", "hit_mean_q", "exposed_mean_q")
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def interval(values) -> dict:
    """Mean and the 95% t-interval half-width over seeds (NaN half-width for a single seed)."""
    v = np.asarray([x for x in values if np.isfinite(x)], np.float64)
    if not len(v):
        return {"mean": float("nan"), "half": float("nan"), "n": 0}
    half = T95.get(len(v) - 1, 1.96) * v.std(ddof=1) / np.sqrt(len(v)) if len(v) > 1 else float("nan")
    return {"mean": float(v.mean()), "half": float(half), "n": int(len(v))}


def per_seed_metrics(per_day: dict, test_days: list[str], name: str) -> dict:
    out = {}
    for k in KEYS:
        vals = [per_day[d][name][k] for d in test_days if np.isfinite(per_day[d][name][k])]
        out[k] = float(np.mean(vals)) if vals else float("nan")
    return out


def summarise(seeds: dict, names: list[str]) -> list[dict]:
    """seeds: seed -> model name -> metric -> value. Rows with mean +- 95% and the paired change vs SFT."""
    rows = []
    for name in names:
        have = [s for s in seeds if name in seeds[s]]
        r = {"model": name, "seeds": len(have)}
        for k in KEYS:
            r[k] = interval([seeds[s][name][k] for s in have])
            rel = [seeds[s][name][k] / seeds[s]["SFT"][k] - 1 for s in have
                   if "SFT" in seeds[s] and seeds[s]["SFT"][k] > 0]
            r[f"{k}_vs_sft"] = interval(rel)
        rows.append(r)
    return rows


def bars(rows: list[dict], default: str, control: str | None = None) -> list[dict]:
    """Issue #20's bars on the seed means (ratio of the means): RL (default) vs SFT, and SFT vs pretrain.

    The issue asks for "the same budget for every row"; SFT has rl_steps fewer updates than RL, so the same bars are
    also checked against the control (SFT continued for rl_steps on the same batches): that comparison isolates what
    the RL term adds, and it is the one a gain must survive.
    """
    by = {r["model"]: r for r in rows}
    rl_row, sft, pre = by.get(default), by.get("SFT"), by.get("pretrain")
    out = []
    refs = [("SFT", sft)] + ([("control (equal budget)", by[control])] if control in by else [])
    for ref_name, ref in refs:
        if not (rl_row and ref):
            continue
        for k, need in (("long_view_recall_at_10", 0.05), ("hit_mean_q", 0.05), ("recall_at_10", -0.01)):
            got = rl_row[k]["mean"] / max(ref[k]["mean"], 1e-12) - 1
            op = ">= " if need < 0 else ">= +"
            out.append({"bar": f"RL {k} vs {ref_name} {op}{need:.0%}", "value": got, "met": bool(got >= need)})
    if sft and pre:
        got = sft["recall_at_10"]["mean"] / max(pre["recall_at_10"]["mean"], 1e-12) - 1
        out.append({"bar": "SFT recall_at_10 >= pretrain", "value": got, "met": bool(got >= 0)})
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--home", default="/tmp/onerec_bench_kr")
    ap.add_argument("--train-days", type=int, default=4)
    ap.add_argument("--test-days", type=int, default=2)
    ap.add_argument("--pretrain-steps", type=int, default=100)
    ap.add_argument("--sft-steps", type=int, default=50)
    ap.add_argument("--rl-steps", type=int, default=50)
    ap.add_argument("--sft-lr", type=float, default=2e-4)
    ap.add_argument("--sft-samples", choices=("positive", "all"), default=None,
                    help="what SFT (and the control) trains on; default: the sft stage's configured samples")
    ap.add_argument("--rl-samples", choices=("positive", "all"), default=None,
                    help="the logged rows RL groups and its generation loss come from (a spec's +samples= overrides); "
                         "default: the rl stage's configured samples")
    ap.add_argument("--rl-lr", type=float, default=None, help="default: the rl stage's configured lr")
    ap.add_argument("--algorithms", default="gbpo,gbpo:sequence,ecpo,grpo,dpo,gbpo@feedback",
                    help="RL specs algorithm[:ratio][@source]; the first is the default config's row")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--max-users", type=int, default=250)
    ap.add_argument("--beam", type=int, default=32)
    ap.add_argument("--out", default=str(RESULTS / "post_training.json"))
    args = ap.parse_args()
    from onerec.config import DEFAULTS

    sft_positive = (args.sft_samples or DEFAULTS["sft"]["samples"]) == "positive"
    rl_lr = args.rl_lr if args.rl_lr is not None else float(DEFAULTS["rl"]["train"]["lr"])
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
    specs = args.algorithms.split(",")
    rl_names = {spec: f"SFT + RL {spec}" for spec in specs}
    control = f"SFT +{args.rl_steps} steps (control)"
    names = ["pretrain", "SFT", control, *rl_names.values()]
    seeds = [int(x) for x in args.seeds.split(",")]
    per_seed, per_day_all, curves0 = {}, {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        files = train_files(store, train_days, sids, tmp, sft_positive, "sft")
        rl_samples = args.rl_samples or DEFAULTS["rl"].get("samples", "all")
        rl_files = {kind: train_files(store, train_days, sids, tmp, kind == "positive", f"rl_{kind}")
                    for kind in {parse_spec(spec).get("samples", rl_samples) for spec in specs}}
        n_train = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
        for seed in seeds:
            torch.manual_seed(seed)
            t = time.perf_counter()
            sft, _ = run_sft(copy.deepcopy(pre), files, sids, args.sft_steps, args.sft_lr, seed)
            timings[f"seed{seed}_sft_s"] = round(time.perf_counter() - t, 1)
            models = {"pretrain": pre, "SFT": copy.deepcopy(sft)} if seed == seeds[0] else {"SFT": copy.deepcopy(sft)}
            t = time.perf_counter()
            # the control sees RL's batches in RL's order (seed + 1, as run_rl): the paired difference is the RL term
            models[control], _ = run_sft(copy.deepcopy(sft), files, sids, args.rl_steps, rl_lr, seed + 1)
            timings[f"seed{seed}_control_s"] = round(time.perf_counter() - t, 1)
            for spec in specs:
                t = time.perf_counter()
                torch.manual_seed(seed)
                spec_files = rl_files[parse_spec(spec).get("samples", rl_samples)]
                models[rl_names[spec]], c = run_rl(copy.deepcopy(sft), spec_files, sids, spec, args.rl_steps, rl_lr,
                                                   trie, seed)
                timings[f"seed{seed}_rl_{spec}_s"] = round(time.perf_counter() - t, 1)
                if seed == seeds[0]:
                    curves0[spec] = c
            t = time.perf_counter()
            per_day = {day: eval_day(models, store, day, args.max_users, args.beam) for day in test_days}
            timings[f"seed{seed}_eval_s"] = round(time.perf_counter() - t, 1)
            per_day_all[seed] = per_day
            per_seed[seed] = {name: per_seed_metrics(per_day, test_days, name) for name in models}
            if "pretrain" in per_seed[seeds[0]]:   # pretrain is seed-independent: the same figures for every seed
                per_seed[seed].setdefault("pretrain", per_seed[seeds[0]]["pretrain"])
            print(f"seed {seed}:", json.dumps({n: {k: round(v, 4) for k, v in m.items()} for n, m in per_seed[seed].items()}),
                  flush=True)
    rows = summarise(per_seed, names)
    checks = bars(rows, rl_names[specs[0]], control)
    grad = {a: {"mean": float(np.mean(c["grad_norm"])), "max": float(np.max(c["grad_norm"])),
                "p95": float(np.percentile(c["grad_norm"], 95)),
                "adv_pos_share": float(np.mean(c.get("adv_pos_share", [0]))),
                "adv_neg_share": float(np.mean(c.get("adv_neg_share", [0]))),
                "group_hit_share": float(np.mean(c["group_hit_share"])) if "group_hit_share" in c else float("nan"),
                "kl_ref_last10": float(np.mean(c["kl_ref"][-10:])) if "kl_ref" in c else float("nan")}
            for a, c in curves0.items()}
    fig = plot(curves0)
    table = markdown(rows, grad, checks, rl_names[specs[0]])
    load1 = os.getloadavg()
    result = {"command": " ".join([".venv/bin/python", "benchmarks/post_training.py", *sys.argv[1:]]),
              "train_days": train_days, "test_days": test_days, "train_samples": n_train, "seeds": seeds,
              "model_config": meta["model_config"], "rl_config_default": dataclasses.asdict(spec_config(specs[0])),
              "args": vars(args), "rl_lr": rl_lr, "rows": rows, "bars": checks, "per_seed": per_seed,
              "per_day": per_day_all, "gradients": grad, "curves_seed0": curves0, "timings": timings,
              "total_s": round(time.perf_counter() - t0, 1),
              "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                          "load_average_start": load0, "load_average_end": load1}}
    slug = {r["model"]: r["model"].split("(")[0].strip().replace(" ", "_").replace("+", "plus").replace(":", "_")
            .replace("@", "_at_").replace("=", "-") for r in rows}
    png = publish(args.out, result, table, fig, home,
                  {"train_days": ",".join(train_days), "test_days": ",".join(test_days), "seeds": args.seeds,
                   "sft_steps": args.sft_steps, "rl_steps": args.rl_steps, "rl_lr": rl_lr},
                  [{f"{slug[r['model']]}.{k}": r[k]["mean"] for r in rows for k in KEYS if np.isfinite(r[k]["mean"])}])
    print(f"\nKuaiRand, train {train_days[0]}..{train_days[-1]} ({n_train} samples), held out {', '.join(test_days)}; "
          f"{args.sft_steps} SFT + {args.rl_steps} RL steps x 64, seeds {args.seeds}; total {result['total_s']} s "
          f"(pipeline {timings['pipeline_s']} s); load {load0[0]:.1f} -> {load1[0]:.1f}\n")
    print(table)
    print(f"wrote {args.out} and {png}")
    return 0


def markdown(rows, grad, checks, default) -> str:
    def f(m):
        if not np.isfinite(m["mean"]):
            return "-"
        return f"{m['mean']:.4f}" + (f" ± {m['half']:.4f}" if np.isfinite(m["half"]) else "")

    def pct(m):
        if not np.isfinite(m["mean"]):
            return "-"
        return f"{100 * m['mean']:+.1f}%" + (f" ± {100 * m['half']:.1f}" if np.isfinite(m["half"]) else "")

    lines = ["| model | seeds | Recall@10 | NDCG@10 | long-view Recall@10 | long-view NDCG@10 | mean q of hits | "
             "Recall@10 vs SFT | long-view R@10 vs SFT | mean q of hits vs SFT |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        mark = " (default)" if r["model"] == default else ""
        lines.append(f"| {r['model']}{mark} | {r['seeds']} | {f(r['recall_at_10'])} | {f(r['ndcg_at_10'])} | "
                     f"{f(r['long_view_recall_at_10'])} | {f(r['long_view_ndcg_at_10'])} | {f(r['hit_mean_q'])} | "
                     f"{pct(r['recall_at_10_vs_sft'])} | {pct(r['long_view_recall_at_10_vs_sft'])} | "
                     f"{pct(r['hit_mean_q_vs_sft'])} |")
    lines += ["", "| bar (issue #20) | measured | met |", "|---|---|---|"]
    lines += [f"| {c['bar']} | {100 * c['value']:+.1f}% | {'yes' if c['met'] else 'NO'} |" for c in checks]
    lines += ["", "| RL spec (seed 0) | grad norm mean | p95 | max | A=+1 share | A=-1 share | beam hit share | KL to SFT (last 10) |",
              "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {a} | {g['mean']:.3f} | {g['p95']:.3f} | {g['max']:.3f} | {g['adv_pos_share']:.3f} | "
              f"{g['adv_neg_share']:.4f} | {g['group_hit_share']:.3f} | {g['kl_ref_last10']:.4f} |" for a, g in grad.items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
