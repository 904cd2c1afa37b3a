"""Reward-model variants on the synthetic world's days, chronologically, as the reward_model stage trains them.

    .venv/bin/python benchmarks/reward_model_ablation.py [--home /tmp/onerec_daily_loop] [--days 7] [--seeds 0,1,2]
        [--variant NAME:key=value,key=value ...]

Reads the features and tokenize outputs of a pipeline home (benchmarks/daily_loop.py or reward_model_auc.py builds
one) and replays the stage's protocol for each variant and seed: on day D the model trained up to D-1 is scored on
D's samples (next-day AUC), then warm-started and trained on D (day 1: its first 90% by time, as the stage does).
A variant overrides RewardConfig fields (d_model, aux_tasks, item_bias, ...), history_days and the training keys
steps, lr, batch_size, weight_decay, embedding_lr; `base` is the stage's defaults (onerec.config.DEFAULTS). Every variant sees the same rows in the same order per
seed. Prints mean next-day AUC (like, long view q > 0.75) over the days with a 95% interval over seeds, and writes
benchmarks/results/reward_model_ablation.{json,md}.
"""
from __future__ import annotations

import argparse
import dataclasses
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
RESULTS = REPO / "benchmarks" / "results"
from onerec.config import DEFAULTS  # noqa: E402

SECTION = DEFAULTS["reward_model"]   # `base` is exactly what the stage reads
TRAIN_KEYS = {k: SECTION[k] for k in ("steps", "lr", "batch_size", "weight_decay", "embedding_lr")}
TASKS = ("like", "q")


def parse_variant(text: str) -> tuple[str, dict]:
    import yaml

    name, _, rest = text.partition(":")
    over = {}
    for kv in filter(None, rest.split(",")):
        k, _, v = kv.partition("=")
        val = yaml.safe_load(v)
        if isinstance(val, str):   # YAML 1.1 reads 3e-2 (no dot) as a string
            try:
                val = float(val)
            except ValueError:
                pass
        over[k] = val
    return name, over


def load_days(home: Path, days: list[str]):
    from onerec.samples import SidTable, with_known_target
    from onerec.store import StageDir, open_store

    store = open_store(str(home / "artifacts"))
    out = []
    for day in days:
        feats, tok = StageDir(store, "daily", day, "features"), StageDir(store, "daily", day, "tokenize")
        if not (feats.is_done() and tok.is_done()):
            raise SystemExit(f"reward_model_ablation: {day} has no finished features/tokenize under {home}")
        sids = SidTable.from_table(tok.read_table("sids"))
        codebook = json.loads(tok.read_bytes("codebook.json"))
        out.append((day, with_known_target(feats.read_table("samples"), sids), sids, codebook))
    return out


def run_variant(data, over: dict, seed: int) -> dict:
    """day -> next-day metrics of the model trained up to the day before."""
    import pyarrow as pa
    import torch

    from onerec import model as M
    from onerec import reward_model as R

    train_kw = {k: over.get(k, v) for k, v in TRAIN_KEYS.items()}
    history = int(over.get("history_days", SECTION["history_days"]))
    fields = {f.name for f in dataclasses.fields(R.RewardConfig)}
    rcfg = R.RewardConfig(**{k: v for k, v in {**SECTION, **over}.items() if k in fields})
    unknown = set(over) - fields - set(TRAIN_KEYS) - {"history_days"}
    if unknown:
        raise SystemExit(f"reward_model_ablation: unknown variant key(s) {sorted(unknown)}")
    model, digest, per_day = None, None, {}
    for n, (day, samples, sids, codebook) in enumerate(data):
        vocab = sids.vocab_sizes(codebook["sizes"])
        if model is not None and codebook["digest"] == digest:
            per_day[day] = R.evaluate(model, samples, sids)
        else:   # first day, or new codebooks: a fresh model (the stage cannot warm-start either)
            torch.manual_seed(seed)
            model = R.RewardModel(M.build(SECTION["context"], codebook_sizes=vocab), rcfg)
        digest = codebook["digest"]
        train = samples
        if n == 0:   # the stage's first day: the last `holdout` share by time is held out
            order = np.argsort(samples["ts"].to_numpy(), kind="stable")
            train = samples.take(pa.array(order[: int(len(order) * (1 - SECTION["holdout"]))]))
        elif history > 1:   # the stage's history_days: the samples of the days ending at D
            train = pa.concat_tables([d[1] for d in data[max(0, n - history + 1): n + 1]])
        R.train(model, train, sids, seed=seed, **train_kw)
    return per_day


def interval(xs) -> tuple[float, float]:
    xs = np.asarray(xs, float)
    if len(xs) < 2:
        return float(xs.mean()), float("nan")
    from scipy import stats

    return float(xs.mean()), float(stats.t.ppf(0.975, len(xs) - 1) * xs.std(ddof=1) / np.sqrt(len(xs)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--home", default="/tmp/onerec_daily_loop")
    ap.add_argument("--start", default="2026-01-01")
    ap.add_argument("--days", type=int, default=7)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--variant", action="append", default=[], help="NAME:key=value,... (repeatable)")
    ap.add_argument("--no-base", action="store_true", help="skip the stage-defaults row (another run has it)")
    ap.add_argument("--out", default=str(RESULTS / "reward_model_ablation.json"))
    args = ap.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    start = dt.date.fromisoformat(args.start)
    days = [(start + dt.timedelta(days=i)).isoformat() for i in range(args.days)]
    data = load_days(Path(args.home), days)
    variants = ([] if args.no_base else [("base", {})]) + [parse_variant(v) for v in args.variant]
    seeds = [int(s) for s in args.seeds.split(",")]
    runs = {}
    for name, over in variants:
        runs[name] = {"overrides": over, "seeds": {}}
        for seed in seeds:
            t = time.perf_counter()
            per_day = run_variant(data, over, seed)
            runs[name]["seeds"][seed] = {"per_day": per_day, "seconds": round(time.perf_counter() - t, 1)}
            means = {k: float(np.mean([m[f"auc_{k}"] for m in per_day.values()])) for k in TASKS}
            print(f"{name} seed {seed}: " + ", ".join(f"{k} {v:.3f}" for k, v in means.items())
                  + f" ({runs[name]['seeds'][seed]['seconds']} s)", flush=True)
            runs[name]["seeds"][seed]["mean"] = means

    lines = [f"Reward-model variants: next-day AUC, mean over days {days[1]}..{days[-1]}, mean ± 95% interval over "
             f"seeds {args.seeds} (`{' '.join(['benchmarks/reward_model_ablation.py', *sys.argv[1:]])}`)", "",
             "| variant | overrides | like AUC | long view (q > 0.75) AUC |", "|---|---|---|---|"]
    for name, r in runs.items():
        cells = []
        for k in TASKS:
            m, h = interval([s["mean"][k] for s in r["seeds"].values()])
            r[f"auc_{k}"] = {"mean": m, "ci95": h}
            cells.append(f"{m:.3f} ± {h:.3f}")
        over = ", ".join(f"{k}={v}" for k, v in r["overrides"].items()) or "(stage defaults)"
        lines.append(f"| {name} | {over} | " + " | ".join(cells) + " |")
    table = "\n".join(lines) + "\n"
    result = {"command": " ".join([".venv/bin/python", "benchmarks/reward_model_ablation.py", *sys.argv[1:]]),
              "days": days, "runs": runs, "args": vars(args), "total_s": round(time.perf_counter() - t0, 1),
              "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                          "torch_threads": torch.get_num_threads(), "load_average": os.getloadavg()}}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=float))
    out.with_suffix(".md").write_text(table)
    print(table)
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
