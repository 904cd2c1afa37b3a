"""GPU training throughput and MFU of the lazy decoder-only presets (issue #6).

    PYTHONPATH=. python3 benchmarks/gpu_train.py [--presets 0.1b,1b] [--contexts 512,3000] [--steps 10]
        [--compile both|on|off] [--budget-s 420] [--out benchmarks/results/gpu_train.json]
    smoke test on CPU:  PYTHONPATH=. python3 benchmarks/gpu_train.py --device cpu --presets debug \
        --contexts 33,64 --batches 4,8 --steps 2 --warmup 1 --compile off --out /tmp/t.json

What one step is: forward + backward + fused AdamW step (fp32 master weights, bf16 autocast) on a random batch
that already sits on the GPU (input transfer and data loading are excluded; several batches are rotated so
the step does not see the same ids twice in a row). Random weights and inputs: the speed of a dense model
does not depend on their values (no zeros are used: the item ids, semantic ids and features are random).

Context length S: the preset's pathways (1 profile token + short 20 + positive 256 + long 235 = 512); for
other S the long-term pathway is stretched or cut (long = S - 1 - 20 - 256). All context events are real
(mask all True), the worst case for attention.

Definitions:
  samples/s      training samples (one user, one target item) per second;
  tokens/s       samples/s * (S + 3): context tokens + the 3 target semantic-ID tokens per sample, the
                 paper's counting; target tokens/s (samples/s * 3) is given too;
  train FLOPs    onerec.model.train_flops(cfg, S): 3 x analytic forward matmul FLOPs per sample
                 (Appendix B, exact for our blocks; attention scores included, elementwise ops not), cross-
                 checked against torch.utils.flop_counter on one step;
  MFU            train FLOPs * samples/s / peak, against the H200 dense bf16 datasheet peak (989.4 TFLOP/s)
                 and against an 8192^3 bf16 matmul measured in the same run (random data).
Timing: CUDA events around `steps` steps after `warmup` steps, median of 3 windows reported with min/max.
The batch size is chosen per (preset, S) as the fastest (samples/s) of the candidates that fit in memory in
eager mode; torch.compile is then run at that batch size when the time budget allows.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from onerec import model as M  # noqa: E402

DATASHEET_BF16_TFLOPS = 989.4   # H100/H200 SXM dense bf16 (no sparsity)
TARGET_TOKENS = 3


def with_context(cfg_name: str, S: int, device_kind: str) -> M.ModelConfig:
    cfg = M.build(cfg_name)
    if S != cfg.context_len:
        paths = list(cfg.pathways)
        fixed = sum(n for _, n in paths[:-1])
        if S - 1 - fixed < 1:
            raise ValueError(f"context {S} too short for pathways {paths}")
        paths[-1] = (paths[-1][0], S - 1 - fixed)
        cfg = M.build(cfg_name, pathways=tuple(paths))
    assert cfg.context_len == S, (cfg.context_len, S)
    return cfg


def rand_batch(cfg: M.ModelConfig, B: int, device, seed: int) -> M.Batch:
    """Same distribution as tests/model/helpers.rand_batch (fill=1.0), generated on the device."""
    g = torch.Generator(device=device).manual_seed(seed)
    paths = {}
    for name, T in cfg.pathways:
        paths[name] = M.Pathway(
            item=torch.randint(1, cfg.item_buckets, (B, T), generator=g, device=device),
            sid=torch.stack([torch.randint(0, n, (B, T), generator=g, device=device) for n in cfg.codebook_sizes], -1),
            feat=torch.randn(B, T, cfg.item_feat_dim, generator=g, device=device),
            mask=torch.ones(B, T, dtype=torch.bool, device=device))
    target = torch.stack([torch.randint(0, n, (B,), generator=g, device=device) for n in cfg.codebook_sizes], -1)
    return M.Batch(torch.randn(B, cfg.user_feat_dim, generator=g, device=device), paths, target)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


class Timer:
    """CUDA events on a GPU, perf_counter on the CPU."""

    def __init__(self, device):
        self.cuda = device.type == "cuda"

    def __enter__(self):
        if self.cuda:
            self.a, self.b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            self.a.record()
        else:
            self.t = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            self.b.record()
            self.b.synchronize()
            self.s = self.a.elapsed_time(self.b) / 1e3
        else:
            self.s = time.perf_counter() - self.t


def matmul_peak(device, n=8192, reps=30) -> float | None:
    if device.type != "cuda":
        return None
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(5):
        a @ b
    times = []
    for _ in range(reps):
        with Timer(device) as t:
            a @ b
        times.append(t.s)
    times.sort()
    del a, b
    torch.cuda.empty_cache()
    return 2 * n ** 3 / times[len(times) // 2] / 1e12


SDPA = "default"   # --sdpa: which scaled_dot_product_attention backend the step may use


def sdpa_ctx():
    import contextlib
    if SDPA == "default":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel
    return sdpa_kernel([{"math": SDPBackend.MATH, "efficient": SDPBackend.EFFICIENT_ATTENTION,
                         "cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION}[SDPA]])


def make_step(model, opt, device, compiled: bool):
    def loss_fn(batch):
        with sdpa_ctx(), torch.autocast(device.type, dtype=torch.bfloat16):
            return model(batch)[1]

    fwd = torch.compile(loss_fn) if compiled else loss_fn

    def step(batch):
        loss = fwd(batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss
    return step


def time_steps(step, batches, device, warmup: int, steps: int, windows: int = 3):
    for i in range(warmup):
        step(batches[i % len(batches)])
    sync(device)
    per_step = []
    for w in range(windows):
        with Timer(device) as t:
            for i in range(steps):
                loss = step(batches[(w * steps + i) % len(batches)])
        per_step.append(t.s / steps)
    if not torch.isfinite(loss):
        raise RuntimeError(f"non-finite loss {loss.item()}")
    return sorted(per_step), float(loss.detach())


def counted_flops(model, cfg, device, B=2) -> float:
    """Executed matmul FLOPs of one train step per sample (torch.utils.flop_counter), for a cross-check."""
    from torch.utils.flop_counter import FlopCounterMode
    batch = rand_batch(cfg, B, device, seed=123)
    with FlopCounterMode(display=False) as fc:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = model(batch)[1]
        loss.backward()
    model.zero_grad(set_to_none=True)
    return fc.get_total_flops() / B


def is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower()


def new_model(name, S, device):
    torch.manual_seed(0)
    cfg = with_context(name, S, device.type)
    with torch.device(device):          # initialise on the device: seconds, not a minute, for 1B
        model = M.OneRec(cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    return cfg, model, opt


def record(rows, name, S, B, mode, per_step, loss, cfg, model, fc, peak, log):
    flops = M.train_flops(cfg, S)
    med = per_step[len(per_step) // 2]
    sps = B / med
    tflops = flops * sps / 1e12
    cuda = next(model.parameters()).is_cuda
    row = dict(preset=name, context=S, batch=B, compile=mode, sdpa=SDPA, params=model.num_params(),
               train_gflops_per_sample=flops / 1e9, counted_gflops_per_sample=fc / 1e9,
               step_s_median=med, step_s_min=per_step[0], step_s_max=per_step[-1],
               samples_per_s=sps, tokens_per_s=sps * (S + TARGET_TOKENS),
               target_tokens_per_s=sps * TARGET_TOKENS, achieved_tflops=tflops,
               mfu_datasheet=tflops / DATASHEET_BF16_TFLOPS,
               mfu_measured_peak=None if peak is None else tflops / peak,
               peak_mem_gib=(torch.cuda.max_memory_allocated() / 2**30) if cuda else None,
               final_loss=loss)
    rows.append(row)
    log(f"  {name} S={S} B={B} {mode}: {med*1e3:.1f} ms/step  {sps:,.0f} samples/s  "
        f"{tflops:.1f} TFLOP/s  MFU {row['mfu_datasheet']:.1%} (datasheet)")
    return row


def free(device):
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def run_eager(name, S, batches_try, args, device, peak, deadline, log):
    """Eager mode over the candidate batch sizes; returns the rows, the fastest marked best_eager_batch."""
    cfg, model, opt = new_model(name, S, device)
    fc = counted_flops(model, cfg, device)
    step = make_step(model, opt, device, compiled=False)
    rows, best = [], None
    for B in batches_try:
        if time.time() > deadline:
            log(f"  budget reached, skip B={B}")
            break
        free(device)
        try:
            data = [rand_batch(cfg, B, device, seed=s) for s in range(2)]
            per_step, loss = time_steps(step, data, device, args.warmup, args.steps)
        except Exception as e:  # noqa: BLE001
            if not is_oom(e):
                raise
            log(f"  {name} S={S} B={B}: out of memory")
            opt.zero_grad(set_to_none=True)
            break
        finally:
            data = None
        row = record(rows, name, S, B, "eager", per_step, loss, cfg, model, fc, peak, log)
        if best is None or row["samples_per_s"] > best["samples_per_s"]:
            best = row
    if best is not None:
        best["best_eager_batch"] = True
    del model, opt, step
    free(device)
    return rows


def run_compiled(name, S, B, args, device, peak, log):
    cfg, model, opt = new_model(name, S, device)
    fc = counted_flops(model, cfg, device)
    rows = []
    free(device)
    try:
        t0 = time.time()
        step = make_step(model, opt, device, compiled=True)
        data = [rand_batch(cfg, B, device, seed=s) for s in range(2)]
        step(data[0])
        sync(device)
        compile_s = time.time() - t0
        per_step, loss = time_steps(step, data, device, args.warmup, args.steps)
        row = record(rows, name, S, B, "compiled", per_step, loss, cfg, model, fc, peak, log)
        row["compile_s"] = compile_s
    except Exception as e:  # noqa: BLE001
        log(f"  compile failed for {name} S={S} B={B}: {type(e).__name__}: {str(e)[:300]}")
        rows.append(dict(preset=name, context=S, batch=B, compile="compiled",
                         error=f"{type(e).__name__}: {str(e)[:500]}"))
    data = step = None
    torch._dynamo.reset()
    del model, opt
    free(device)
    return rows


def profile(name, S, B, device, path, log):
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as prof
    cfg, model, opt = new_model(name, S, device)
    step = make_step(model, opt, device, compiled=False)
    data = [rand_batch(cfg, B, device, seed=s) for s in range(2)]
    for i in range(3):
        step(data[i % 2])
    sync(device)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with prof(activities=acts) as p:
        for i in range(2):
            step(data[i % 2])
        sync(device)
    key = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
    table = p.key_averages().table(sort_by=key, row_limit=25, max_name_column_width=70)
    path.write_text(table)
    log(f"profile {name} S={S} B={B} sdpa={SDPA} (2 steps):\n{table}")
    del model, opt, step, data
    free(device)


def markdown(result) -> str:
    peak = result["measured_bf16_matmul_tflops"]
    lines = [f"GPU: {result['gpu']} | torch {result['torch']} | bf16 autocast, fused AdamW | "
             f"measured 8192^3 bf16 matmul: {peak:.0f} TFLOP/s" if peak else f"device: {result['gpu']}", "",
             "| preset | context | batch | mode | sdpa | ms/step | samples/s | tokens/s (ctx+3) | GFLOP/sample (train) "
             "| TFLOP/s | MFU (989 TF) | MFU (measured peak) | peak mem GiB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        if "error" in r:
            lines.append(f"| {r['preset']} | {r['context']} | {r['batch']} | {r['compile']} | | error: "
                         f"{r['error'][:80]} | | | | | | | |")
            continue
        mp = "" if r["mfu_measured_peak"] is None else f"{r['mfu_measured_peak']:.1%}"
        mem = "" if r["peak_mem_gib"] is None else f"{r['peak_mem_gib']:.1f}"
        star = "*" if r.get("best_eager_batch") else ""
        lines.append(f"| {r['preset']} | {r['context']} | {r['batch']}{star} | {r['compile']} | {r.get('sdpa', 'default')} | "
                     f"{r['step_s_median']*1e3:.1f} | {r['samples_per_s']:,.0f} | {r['tokens_per_s']:,.0f} | "
                     f"{r['train_gflops_per_sample']:.2f} | {r['achieved_tflops']:.1f} | "
                     f"{r['mfu_datasheet']:.1%} | {mp} | {mem} |")
    lines.append("")
    lines.append("`*` fastest eager batch (compiled runs use it). tokens = context tokens + 3 target tokens per sample.")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--presets", default="0.1b,1b")
    ap.add_argument("--contexts", default="512,3000")
    ap.add_argument("--batches", default="", help="comma list for every config; default per (preset, context)")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--compile", default="both", choices=["off", "on", "both"])
    ap.add_argument("--budget-s", type=float, default=420)
    ap.add_argument("--compile-reserve-s", type=float, default=60,
                    help="do not start a compile with less than this left of the budget")
    ap.add_argument("--out", default="benchmarks/results/gpu_train.json")
    ap.add_argument("--sdpa", default="default", choices=["default", "math", "efficient", "cudnn", "flash"],
                    help="restrict F.scaled_dot_product_attention to one backend (default: PyTorch's choice)")
    ap.add_argument("--profile", type=int, default=0,
                    help="instead of the sweep: profile this batch size (eager) for each config, top CUDA kernels")
    args = ap.parse_args()
    global SDPA
    SDPA = args.sdpa
    device = torch.device(args.device)
    t_start = time.time()
    deadline = t_start + args.budget_s
    torch.backends.cuda.matmul.allow_tf32 = True
    log = lambda s: print(s, flush=True)  # noqa: E731

    peak = matmul_peak(device)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    log(f"device {gpu}, torch {torch.__version__}, measured bf16 matmul peak: {peak}")
    default_batches = {  # fastest-first guesses; larger ones are tried while they fit and time allows
        ("0.1b", 512): [2048, 4096, 8192], ("0.1b", 3000): [512, 1024, 2048],
        ("1b", 512): [1024, 2048, 4096], ("1b", 3000): [256, 512, 1024],
    }
    result = dict(gpu=gpu, torch=torch.__version__, cuda=torch.version.cuda, python=platform.python_version(),
                  datasheet_bf16_tflops=DATASHEET_BF16_TFLOPS, measured_bf16_matmul_tflops=peak,
                  precision="bf16 autocast, fp32 master weights, fused AdamW",
                  tokens_definition="context tokens (S, incl. the profile token) + 3 target semantic-ID tokens per sample",
                  flops_definition="onerec.model.train_flops: 3 x analytic forward matmul FLOPs per sample",
                  timing=f"CUDA events, median of 3 windows of {args.steps} steps after {args.warmup} warm-up steps; "
                         "inputs already on the GPU",
                  rows=[])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    configs = [(name, int(S)) for name in args.presets.split(",") for S in args.contexts.split(",")]
    if args.profile:
        for name, S in configs:
            profile(name, S, args.profile, device, out.with_name(f"profile_{name}_{S}_{SDPA}.txt"), log)
        return
    best = {}
    for name, S in configs:                                   # phase 1: eager, batch-size sweep
        bt = [int(b) for b in args.batches.split(",")] if args.batches else default_batches.get((name, S), [8, 16])
        if time.time() > deadline:
            log(f"budget reached: skip {name} S={S}")
            continue
        rows = run_eager(name, S, bt, args, device, peak, deadline, log)
        result["rows"] += rows
        best.update({(name, S): r["batch"] for r in rows if r.get("best_eager_batch")})
        result["elapsed_s"] = time.time() - t_start
        out.write_text(json.dumps(result, indent=1))
    if args.compile in ("on", "both"):                        # phase 2: torch.compile at the best batch
        for name, S in configs:
            if (name, S) not in best:
                continue
            if time.time() > deadline - args.compile_reserve_s:
                log(f"  compile skipped for {name} S={S}: time budget")
                result["rows"].append(dict(preset=name, context=S, batch=best[(name, S)], compile="compiled",
                                           error="skipped: device time budget"))
                continue
            result["rows"] += run_compiled(name, S, best[(name, S)], args, device, peak, log)
            result["elapsed_s"] = time.time() - t_start
            out.write_text(json.dumps(result, indent=1))
    md = markdown(result)
    out.with_suffix(".md").write_text(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
