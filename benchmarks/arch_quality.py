"""The three architectures at equal parameters and equal budget on a leave-one-out split: validation quality.

    .venv/bin/python benchmarks/arch_quality.py [--data ../shared/data/amazon14_beauty_5core] [--preset small]
                                                [--steps 300] [--batch 64] [--seed 0] [--archs lazy,encdec,naive]

Data: `onerec.data.leave_one_out` on an S3-Rec folder (Beauty by default; Sports, Toys, ... work the same):
train targets = every position but the last two of each user, validation = the second-to-last item.
Items get 3 x 256 RQ-KMeans semantic IDs from their content vectors (all-MiniLM-L6-v2 on brand + category
names + hashed attribute ids; text vectors cached under $ONEREC_HOME/bench_cache).
Models: the lazy decoder from the preset; the encoder-decoder (1:1) and the naive decoder-only get the layer
counts whose non-embedding parameters are closest to the lazy one's (benchmarks/architectures.py).
Budget: the same steps, global batch, AdamW + warmup/cosine schedule, seed and data order for all three,
through the project's training loop (`onerec.train.train` over a `ParquetStream`).
Metric: validation generation loss = mean NLL of the 3 semantic tokens of each validation target
(teacher-forced, the training loss), averaged over validation samples; per-level NLL alongside.
Prints a Markdown table and writes benchmarks/results/arch_quality.json (machine, load average, command).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
from architectures import equal_param, non_embedding_params  # noqa: E402
from onerec import model as M  # noqa: E402
from onerec.config import home  # noqa: E402
from onerec.data import leave_one_out as loo  # noqa: E402
from onerec.samples import SidTable, collate, with_known_target  # noqa: E402
from onerec.train import ParquetStream, TrainConfig, train  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
DEFAULT_DATA = (REPO / ".." / "shared" / "data" / "amazon14_beauty_5core").resolve()


def build_split(args) -> loo.LeaveOneOut:
    from onerec.item.cache import EmbeddingCache
    from onerec.item.encoders import TextEncoder
    from onerec.store import LocalStore

    cfg = loo.LOOConfig(name=args.name, short_len=args.short_len, long_len=args.long_len,
                        codebook_size=args.codebook_size, seed=args.seed)
    cache = EmbeddingCache(LocalStore(home() / "bench_cache"), TextEncoder().fingerprint)
    return loo.build(args.data, cfg, cache=cache)


def model_configs(preset: str, pathways: tuple, codebook_sizes: tuple) -> list[M.ModelConfig]:
    lazy = M.build(preset, pathways=pathways, codebook_sizes=codebook_sizes)
    return [lazy, equal_param(lazy, "encdec"), equal_param(lazy, "naive")]


@torch.no_grad()
def validation_nll(model: M.OneRec, table, cfg: M.ModelConfig, sids: SidTable, batch: int) -> dict:
    """Mean over samples of the mean NLL of the 3 target tokens (the training loss), and per level."""
    model.eval()
    total, per_level, n = 0.0, np.zeros(len(cfg.codebook_sizes)), 0
    for start in tqdm(range(0, table.num_rows, batch), desc="validation", leave=False):
        b = collate(table.slice(start, batch), cfg, sids)
        logits, _ = model(b)
        nll = torch.stack([F.cross_entropy(lg.float(), b.target[:, i], reduction="sum") for i, lg in enumerate(logits)])
        per_level += nll.numpy()
        total += float(nll.mean())
        n += len(b.target)
    return {"nll": total / n, "nll_per_level": (per_level / n).tolist()}


def unigram_nll(train_targets: np.ndarray, valid_targets: np.ndarray, sizes) -> dict:
    """Reference: NLL of the validation codes under the train targets' code frequencies per level (add-one).
    A model below it has learned something about the user beyond which codes are popular."""
    per_level = []
    for level, k in enumerate(sizes):
        p = np.bincount(train_targets[:, level], minlength=k) + 1.0
        per_level.append(float(-np.log(p / p.sum())[valid_targets[:, level]].mean()))
    return {"arch": "unigram (train code frequencies)", "valid_nll": float(np.mean(per_level)),
            "valid_nll_per_level": per_level}


def run_arch(cfg: M.ModelConfig, train_file: str, valid, sids: SidTable, args) -> dict:
    torch.manual_seed(args.seed)   # identical initialisation RNG for every architecture
    model = M.OneRec(cfg)
    tcfg = TrainConfig(max_steps=args.steps, batch_size=args.batch, lr=args.lr, warmup_steps=max(1, args.steps // 10),
                       seed=args.seed, log_every=max(1, args.steps // 10))
    stream = ParquetStream([train_file], args.batch, lambda t: collate(t, cfg, sids), seed=args.seed)
    t0 = time.perf_counter()
    out = train(model, stream, tcfg, flops_per_sample=M.train_flops(cfg))
    seconds = time.perf_counter() - t0
    model.load_state_dict(out["state_dict"])
    t1 = time.perf_counter()
    val = validation_nll(model, valid, cfg, sids, args.eval_batch)
    return {"arch": cfg.arch, "layers": cfg.n_layers, "enc_layers": cfg.n_enc_layers if cfg.arch == "encdec" else 0,
            "params": model.num_params(), "params_non_embedding": non_embedding_params(cfg),
            "train_seconds": round(seconds, 1), "eval_seconds": round(time.perf_counter() - t1, 1),
            "final_train_loss": out["final_loss"], "train_loss_last10": float(np.mean(out["losses"][-10:])),
            "valid_nll": val["nll"], "valid_nll_per_level": val["nll_per_level"]}


def machine() -> dict:
    return {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "device": "cpu", "load_average_start": list(os.getloadavg())}


def markdown(rows: list[dict]) -> str:
    lines = ["| arch | layers (enc) | params | non-emb params | train s | valid NLL (mean of 3) | NLL s1 / s2 / s3 "
             "| train loss (last 10) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "params" not in r:   # the reference row
            lv = " / ".join(f"{x:.3f}" for x in r["valid_nll_per_level"])
            lines.append(f"| {r['arch']} | - | - | - | - | {r['valid_nll']:.4f} | {lv} | - |")
            continue
        lv = " / ".join(f"{x:.3f}" for x in r["valid_nll_per_level"])
        lines.append(f"| {r['arch']} | {r['layers']} ({r['enc_layers']}) | {r['params'] / 1e6:.2f}M | "
                     f"{r['params_non_embedding'] / 1e6:.2f}M | {r['train_seconds']:.0f} | {r['valid_nll']:.4f} | {lv} | "
                     f"{r['train_loss_last10']:.4f} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="an S3-Rec dataset folder")
    ap.add_argument("--name", default=None, help="dataset name (<name>.txt); default: the folder's only one")
    ap.add_argument("--preset", default="small", help="model preset of the lazy decoder (onerec.model.PRESETS)")
    ap.add_argument("--archs", default="lazy,encdec,naive")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--short-len", type=int, default=20)
    ap.add_argument("--long-len", type=int, default=16)
    ap.add_argument("--codebook-size", type=int, default=256)
    ap.add_argument("--eval-batch", type=int, default=1024)
    ap.add_argument("--max-valid", type=int, default=0, help="score a seeded random subset of N validation samples (0: all)")
    ap.add_argument("--out", default=str(RESULTS / "arch_quality.json"))
    args = ap.parse_args()

    info = machine()
    t0 = time.perf_counter()
    split = build_split(args)
    print(f"{split.info['name']}: {split.info}", flush=True)
    sids = SidTable.from_table(split.sids)
    sizes = sids.vocab_sizes(split.info["sids"]["sizes"])
    samples = with_known_target(split.samples, sids)
    valid = loo.only(samples, "valid")
    if 0 < args.max_valid < valid.num_rows:   # a seeded random subset: user ids are not in random order
        keep = np.sort(np.random.default_rng(args.seed).choice(valid.num_rows, args.max_valid, replace=False))
        valid = valid.take(keep)
    pathways = (("short", args.short_len), ("positive", args.short_len), ("long", args.long_len))
    wanted = args.archs.split(",")
    train_rows = loo.only(samples, "train")
    rows = [unigram_nll(sids.lookup(train_rows["item_id"].to_numpy()), sids.lookup(valid["item_id"].to_numpy()), sizes)]
    with tempfile.TemporaryDirectory() as tmp:
        train_file = f"{tmp}/train.parquet"
        pq.write_table(train_rows, train_file, row_group_size=16384)
        prep_seconds = time.perf_counter() - t0
        for cfg in model_configs(args.preset, pathways, sizes):
            if cfg.arch in wanted:
                print(f"\n== {cfg.arch}: {cfg.n_layers} layers", flush=True)
                rows.append(run_arch(cfg, train_file, valid, sids, args))
                print(f"   valid NLL {rows[-1]['valid_nll']:.4f}, train {rows[-1]['train_seconds']} s", flush=True)
    info["load_average_end"] = list(os.getloadavg())
    table = markdown(rows)
    print(f"\n{split.info['name']} leave-one-out, preset {args.preset}, {args.steps} steps x batch {args.batch} "
          f"(~{args.steps * args.batch / split.info['samples']['train']:.2f} epochs), seed {args.seed}, "
          f"{valid.num_rows} validation samples; load average {info['load_average_start'][0]:.2f} -> "
          f"{info['load_average_end'][0]:.2f} on {info['cpu_count']} cores\n")
    print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "command": " ".join([".venv/bin/python", "benchmarks/arch_quality.py", *sys.argv[1:]]),
        "dataset": split.info, "preset": args.preset, "steps": args.steps, "batch": args.batch, "lr": args.lr,
        "seed": args.seed, "pathways": pathways, "codebook_sizes": list(sizes), "valid_samples": valid.num_rows,
        "prep_seconds": round(prep_seconds, 1), "machine": info, "rows": rows, "markdown": table}, indent=2, default=str))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
