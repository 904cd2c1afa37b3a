"""The three architectures at equal parameters: analytic GFLOPs per sample, activation memory, measured
training samples/s, at context 512 and 3000.

    .venv/bin/python benchmarks/architectures.py [--preset small] [--steps 5] [--batch 128] [--contexts 512,3000] [--device cpu]

Equal parameters: the encoder-decoder (1:1) and the naive decoder-only get the layer counts whose
non-embedding parameter count is closest to the lazy decoder's (same d_model and heads).
Paper anchor (OneRec-V2 Table 2, 1B): lazy 18.89 GFLOPs vs encoder-decoder 296.36 (~15x).
Target: lazy samples/s >= 12x the encoder-decoder's at context 512.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "model"))
from helpers import rand_batch  # noqa: E402
from onerec import model as M  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def pathways_for(context: int) -> tuple:
    # the paper's split: short-term 20, positive 256, the rest long-term (one token is the static profile)
    return (("short", 20), ("positive", 256), ("long", context - 1 - 276))


def non_embedding_params(cfg: M.ModelConfig) -> int:
    with torch.device("meta"):
        m = M.OneRec(cfg)
    return sum(p.numel() for n, p in m.named_parameters() if not n.startswith(("context.item", "context.sid")))


def equal_param(base: M.ModelConfig, arch: str) -> M.ModelConfig:
    target = non_embedding_params(base)
    best = None
    for layers in range(1, 4 * base.n_layers + 1):
        cfg = replace(base, arch=arch, n_layers=layers, n_enc_layers=layers if arch == "encdec" else 0)
        gap = abs(non_embedding_params(cfg) - target)
        if best is None or gap < best[0]:
            best = (gap, cfg)
    return best[1]


def measure(cfg: M.ModelConfig, batch_size: int, steps: int, device: str) -> float:
    torch.manual_seed(0)
    model = M.OneRec(cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch = rand_batch(cfg, B=batch_size).to(device)
    for i in range(steps + 2):   # 2 warm-up steps
        if i == 2:
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            _, loss = model(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    if device == "cuda":
        torch.cuda.synchronize()
    return batch_size * steps / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="small")
    ap.add_argument("--contexts", default="512,3000")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=128)   # small batches time the optimizer over the embedding tables
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = ap.parse_args()
    if a.device == "cpu":
        torch.set_num_threads(max(1, torch.get_num_threads()))
    rows = []
    for context in map(int, a.contexts.split(",")):
        lazy = M.build(a.preset, pathways=pathways_for(context))
        for cfg in (lazy, equal_param(lazy, "encdec"), equal_param(lazy, "naive")):
            f = M.forward_flops(cfg)
            rows.append({
                "arch": cfg.arch, "context": context, "layers": cfg.n_layers,
                "enc_layers": cfg.n_enc_layers if cfg.arch == "encdec" else 0,
                "params_non_embedding_M": non_embedding_params(cfg) / 1e6,
                "train_gflops_per_sample": 3 * f["total"] / 1e9,
                "context_share": f["context"] / f["total"],
                "activations_M_per_sample": M.activation_elements(cfg) / 1e6,
                "samples_per_s": measure(cfg, a.batch, a.steps, a.device),
                "load_avg_1min": os.getloadavg()[0],
            })
            print(f"  {cfg.arch:6s} ctx {context}: {rows[-1]['samples_per_s']:.1f} samples/s", file=sys.stderr)
    for context in {r["context"] for r in rows}:
        lazy = next(r for r in rows if r["arch"] == "lazy" and r["context"] == context)
        for r in rows:
            if r["context"] == context:
                r["lazy_speedup"] = lazy["samples_per_s"] / r["samples_per_s"]
                r["lazy_flops_saving"] = r["train_gflops_per_sample"] / lazy["train_gflops_per_sample"]
    device = torch.cuda.get_device_name() if a.device == "cuda" else f"CPU x{torch.get_num_threads()} threads"
    print(f"\npreset {a.preset}, batch {a.batch}, {device}\n")
    print("| arch | context | layers (enc) | non-emb params (M) | train GFLOPs/sample | context share | "
          "activations (M el.) | samples/s | lazy speedup | FLOPs ratio vs lazy |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['arch']} | {r['context']} | {r['layers']} ({r['enc_layers']}) | {r['params_non_embedding_M']:.2f} | "
              f"{r['train_gflops_per_sample']:.4f} | {r['context_share']:.1%} | {r['activations_M_per_sample']:.2f} | "
              f"{r['samples_per_s']:.1f} | {r['lazy_speedup']:.1f}x | {r['lazy_flops_saving']:.1f}x |")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"architectures_{a.preset}_{a.device}_b{a.batch}.json"
    out.write_text(json.dumps({"preset": a.preset, "device": device, "batch": a.batch, "rows": rows}, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
