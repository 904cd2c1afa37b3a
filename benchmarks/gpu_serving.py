"""GPU serving latency of one request: context encoding + trie-constrained beam search (issue #7).

    PYTHONPATH=. python3 benchmarks/gpu_serving.py [--preset 1b] [--context 3000] [--beam 512]
        [--items 100000,1000000] [--requests 200] [--out benchmarks/results/gpu_serving.json]
    smoke test on CPU:  PYTHONPATH=. python3 benchmarks/gpu_serving.py --device cpu --preset debug \
        --context 64 --beam 16 --items 500 --requests 5 --warmup 2 --out /tmp/s.json

In-process (FastAPI is not on the GPU machine): one request = its features copied host -> device, then
`onerec.decoding.beam_search` (model.encode of the context once, then the incremental lazy decoder over the
beams with cached self-attention K/V, constrained by the SidTrie), then `resolve` to the top-N items, batch 1.
Wall clock (perf_counter) around the whole request: the beam search returns numpy arrays on the host, so
the GPU work is finished when it returns. p50/p99 over `--requests` sequential requests after `--warmup`,
rotating over 16 different random users.

Model: the preset with random weights (latency does not depend on the values), context S (profile token +
short 20 + positive 256 + long S-277, all events real), codebook sizes (8192, 8192, 8192) as in the preset.
Trie: `items` items with SIDs drawn uniformly from 8192^3 (seed 0), so level 1 has ~8192 distinct codes.
Two precisions, both under torch.autocast(bfloat16) (it casts the fp32 input features): 'bf16 weights'
(model.to(bfloat16), what a server loads) and 'fp32 weights+autocast' (weights cast to bf16 once per request).
FLOPs per request: torch.utils.flop_counter over one whole request (matmuls and attention actually executed),
and the analytic count (context projection + per beam row per layer: q/o 4D^2, cross-attention 4SD, self-attn
qkv/out 8D^2, FFN 6*D*ffn, plus the level head 2*D*V). Achieved TFLOP/s = counted FLOPs / p50.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from onerec import decoding  # noqa: E402
from onerec import model as M  # noqa: E402
from onerec.item.trie import SidTrie  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_train import DATASHEET_BF16_TFLOPS, matmul_peak, rand_batch, sync, with_context  # noqa: E402


def model_only_ms(model, cfg, cpu_batch, beam, device, reps=30):
    """GPU work of one request without the host-side selection: encode + the 3 decoder levels with `beam` rows
    at levels 1 and 2 (random tokens), synchronised wall clock; the floor for these kernels as launched now."""
    rng = np.random.default_rng(0)
    ts = []
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16):
        for i in range(reps + 3):
            sync(device)
            t = time.perf_counter()
            state = model.encode(cpu_batch.to(device))
            dec = decoding._IncrementalLazy(model, state, 1)
            dec.logp()
            dec.advance(np.zeros(beam, np.int64), rng.integers(0, cfg.codebook_sizes[0], beam), np.arange(beam), beam)
            dec.logp()
            dec.advance(np.arange(beam), rng.integers(0, cfg.codebook_sizes[1], beam), np.arange(beam), beam)
            dec.logp()
            sync(device)
            if i >= 3:
                ts.append(time.perf_counter() - t)
    return float(np.median(ts) * 1e3), float(np.percentile(ts, 99) * 1e3)


def make_trie(cfg, n_items: int, seed: int = 0) -> SidTrie:
    rng = np.random.default_rng(seed)
    sids = np.stack([rng.integers(0, n, n_items) for n in cfg.codebook_sizes], 1)
    return SidTrie.build(sids, np.arange(n_items, dtype=np.int64) + 1)


def analytic_flops(cfg, S: int, rows_per_level) -> float:
    D = cfg.d_model
    total = M.forward_flops(cfg, S)["context"]
    for j, rows in enumerate(rows_per_level):
        per_row = 0
        for layer in range(cfg.n_layers):
            per_row += 4 * D * D + 4 * S * D + 8 * D * D + 4 * (j + 1) * D + 6 * D * cfg.ffn_dim
        per_row += 2 * D * cfg.codebook_sizes[j]
        total += rows * per_row
    return total


def one_request(model, cpu_batch, trie, beam, top_n, device, autocast: bool):
    batch = cpu_batch.to(device)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=True):
        gen = decoding.beam_search(model, batch, trie, beam)
    recs = decoding.resolve(trie, gen, top_n)
    return gen, recs


def run_variant(model, cfg, S, trie, args, device, autocast, peak, log):
    users = [rand_batch(cfg, 1, torch.device("cpu"), seed=1000 + i) for i in range(16)]
    if device.type == "cuda":
        users = [u.to("cpu") for u in users]
        for u in users:    # pinned host memory, as a server's input buffers would be
            u.user = u.user.pin_memory()
            for p in u.paths.values():
                p.item, p.sid, p.feat, p.mask = (t.pin_memory() for t in (p.item, p.sid, p.feat, p.mask))
    for i in range(args.warmup):
        gen, recs = one_request(model, users[i % 16], trie, args.beam, args.top_n, device, autocast)
    sync(device)
    # rows decoded per level (for the analytic count): 1 at level 0, then the live beams
    live = (gen.nodes[0] >= 0).sum()
    # FLOPs of one request, counted
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as fc:
        one_request(model, users[0], trie, args.beam, args.top_n, device, autocast)
    counted = fc.get_total_flops()
    # encode-only time (context processor), CUDA-synchronised wall clock
    enc = []
    with torch.inference_mode():
        for i in range(min(args.requests, 50)):
            b = users[i % 16]
            sync(device)
            t = time.perf_counter()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=True):
                model.encode(b.to(device))
            sync(device)
            enc.append(time.perf_counter() - t)
    lat, search = [], []
    for i in range(args.requests):
        sync(device)
        t0 = time.perf_counter()
        batch = users[i % 16].to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=True):
            gen = decoding.beam_search(model, batch, trie, args.beam)
        t1 = time.perf_counter()
        recs = decoding.resolve(trie, gen, args.top_n)
        t2 = time.perf_counter()
        lat.append(t2 - t0)
        search.append(t1 - t0)
    assert 0 < len(recs[0]) <= args.top_n, len(recs[0])
    lat, search, enc = (np.array(x) * 1e3 for x in (lat, search, enc))
    p50 = float(np.percentile(lat, 50))
    k1 = min(args.beam, len(trie.tokens[0]))
    rows = [1, k1, int(live)] if len(cfg.codebook_sizes) == 3 else None
    ana = analytic_flops(cfg, S, rows) if rows else None
    tflops = counted / (p50 / 1e3) / 1e12
    return dict(items=len(trie.items), level1_codes=len(trie.tokens[0]), precision="fp32 weights+autocast" if autocast else "bf16 weights",
                selection="allowed entries to host",
                beam=args.beam, top_n=args.top_n, items_returned=len(recs[0]), requests=args.requests,
                p50_ms=p50, p90_ms=float(np.percentile(lat, 90)), p99_ms=float(np.percentile(lat, 99)),
                max_ms=float(lat.max()), mean_ms=float(lat.mean()),
                beam_search_p50_ms=float(np.percentile(search, 50)),
                resolve_p50_ms=float(np.percentile(lat - search, 50)),
                encode_p50_ms=float(np.percentile(enc, 50)),
                beams_per_level=rows, counted_gflops=counted / 1e9,
                analytic_gflops=None if ana is None else ana / 1e9,
                achieved_tflops_at_p50=tflops, mfu_datasheet=tflops / DATASHEET_BF16_TFLOPS,
                mfu_measured_peak=None if peak is None else tflops / peak,
                meets_p99_10ms=float(np.percentile(lat, 99)) <= 10.0)


def logp_copy_ms(device, rows=512, vocab=8192, reps=20):
    """What copying a whole (rows x vocab) log-probability matrix to the host would cost per level (beam_search
    copies only the allowed entries since gpu_serving_v2.md measured the difference)."""
    if device.type != "cuda":
        return None
    x = torch.randn(rows, vocab, device=device)
    for _ in range(3):
        x.double().cpu().numpy()
    ts = []
    for _ in range(reps):
        torch.cuda.synchronize()
        t = time.perf_counter()
        x.double().cpu().numpy()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts) * 1e3)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--preset", default="1b")
    ap.add_argument("--context", type=int, default=3000)
    ap.add_argument("--beam", type=int, default=512)
    ap.add_argument("--top-n", type=int, default=100)
    ap.add_argument("--items", default="100000,1000000")
    ap.add_argument("--precisions", default="bf16,autocast")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--out", default="benchmarks/results/gpu_serving.json")
    args = ap.parse_args()
    device = torch.device(args.device)
    log = lambda s: print(s, flush=True)  # noqa: E731
    peak = matmul_peak(device)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    log(f"device {gpu}, torch {torch.__version__}, measured bf16 matmul peak: {peak}")
    torch.manual_seed(0)
    cfg = with_context(args.preset, args.context, device.type)
    base = M.OneRec(cfg).eval()
    n_params = base.num_params()
    result = dict(gpu=gpu, torch=torch.__version__, cuda=torch.version.cuda, python=platform.python_version(),
                  preset=args.preset, params=n_params, context=args.context, codebook_sizes=list(cfg.codebook_sizes),
                  measured_bf16_matmul_tflops=peak, datasheet_bf16_tflops=DATASHEET_BF16_TFLOPS,
                  logp_host_copy_ms_512x8192=logp_copy_ms(device),
                  method="in-process, batch 1, sequential; wall clock per request incl. host->device copy of the "
                         "features, beam_search and resolve to top-N items", rows=[])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tries = {}
    for n in (int(x) for x in args.items.split(",")):
        t = time.time()
        tries[n] = make_trie(cfg, n)
        log(f"trie of {n} items: {len(tries[n].tokens[0])} level-1 codes, built in {time.time() - t:.1f}s")
    for prec in args.precisions.split(","):
        autocast = prec == "autocast"
        if autocast:
            model = base.to(device)
        else:
            model = M.OneRec(cfg).eval()
            model.load_state_dict(base.state_dict())
            model = model.to(device=device, dtype=torch.bfloat16)
        mo = model_only_ms(model, cfg, rand_batch(cfg, 1, torch.device("cpu"), seed=7), args.beam, device)
        result.setdefault("model_only_ms", {})[prec] = dict(p50=mo[0], p99=mo[1])
        log(f"  {prec}: GPU work only (encode + 3 decoder levels, no selection): p50 {mo[0]:.2f} ms p99 {mo[1]:.2f} ms")
        for n, trie in tries.items():
            row = run_variant(model, cfg, args.context, trie, args, device, autocast, peak, log)
            result["rows"].append(row)
            log(f"  {prec} items={n}: p50 {row['p50_ms']:.2f} ms  p99 {row['p99_ms']:.2f} ms  "
                f"(encode {row['encode_p50_ms']:.2f}, resolve {row['resolve_p50_ms']:.2f})  "
                f"{row['counted_gflops']:.0f} GFLOP -> {row['achieved_tflops_at_p50']:.1f} TFLOP/s")
            out.write_text(json.dumps(result, indent=1))
        del model
        base = base.cpu()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    md = [f"GPU: {gpu} | torch {torch.__version__} | preset {args.preset} ({n_params/1e9:.2f}B params) | "
          f"context {args.context} | beam {args.beam} | top-{args.top_n} | batch 1 | "
          f"measured bf16 matmul peak {peak or 0:.0f} TFLOP/s | logp host copy (512x8192 fp64) "
          f"{result['logp_host_copy_ms_512x8192'] or 0:.2f} ms", "",
          "| precision | selection | items | p50 ms | p90 ms | p99 ms | encode p50 ms | resolve p50 ms | GFLOP/request (counted) "
          "| GFLOP (analytic) | TFLOP/s at p50 | MFU (989 TF) | p99 <= 10 ms |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        ana = "" if r["analytic_gflops"] is None else f"{r['analytic_gflops']:.0f}"
        md.append(f"| {r['precision']} | {r['selection']} | {r['items']:,} | {r['p50_ms']:.2f} | {r['p90_ms']:.2f} | {r['p99_ms']:.2f} | "
                  f"{r['encode_p50_ms']:.2f} | {r['resolve_p50_ms']:.2f} | {r['counted_gflops']:.0f} | {ana} | "
                  f"{r['achieved_tflops_at_p50']:.1f} | {r['mfu_datasheet']:.1%} | "
                  f"{'yes' if r['meets_p99_10ms'] else 'no'} |")
    for prec, mo in result.get("model_only_ms", {}).items():
        md.append(f"\nGPU work only ({prec}: encode + 3 decoder levels at beam {args.beam}, no host selection): "
                  f"p50 {mo['p50']:.2f} ms, p99 {mo['p99']:.2f} ms")
    text = "\n".join(md)
    out.with_suffix(".md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
