"""RQ-KMeans tokenizer speed: synthetic vectors, plain vs balanced, and balanced vs k-means-constrained.

  .venv/bin/python benchmarks/tokenizer.py                  # everything (~30 min on 2 cores)
  .venv/bin/python benchmarks/tokenizer.py --only 100k      # the 100k rows only
  .venv/bin/python benchmarks/tokenizer.py --only kmc --kmc-timeout 900

Rows: n in {100k, 1M} Gaussian vectors (d=256; the hardest case for k-means: no cluster structure)
x codebooks {3x256, 3x8192} x {plain, balanced}, with the stage's default RQConfig (32 training points
per centroid, 20 Lloyd iterations, neighbour search for K >= 1024, slack 5%). Reported: wall time,
max/mean cluster size per level, final residual error.
Wall time depends on what else runs on the machine: the CPU time (both threads) and the 1-minute load
average at the end of each run are recorded next to it.
Comparison: balanced RQ-KMeans vs the PyPI package k-means-constrained (min-cost-flow balanced
k-means, the usual reference) on 20k vectors with the same size cap; k-means-constrained runs in a
subprocess with a time limit and n_init=1 (its default 10 restarts would take 10x longer).
Targets (2 cores): balanced 100k x 3x256 <= 30 s, balanced 1M x 3x8192 <= 10 min, >= 30x faster
than k-means-constrained. Prints a Markdown table and writes benchmarks/results/tokenizer.json.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from onerec.item import metrics, rqkmeans as rq  # noqa: E402

D = 256


def vectors(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, D), dtype=np.float32)


def run_rq(n: int, k: int, balanced: bool, levels: int = 3) -> dict:
    x = vectors(n)
    cfg = rq.RQConfig(levels=levels, codebook_size=k, balanced=balanced, progress=False)
    t0, c0 = time.perf_counter(), time.process_time()
    _, codes, st = rq.fit(x, cfg)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    levels_st = metrics.level_stats(codes, [k] * levels)
    return {"n": n, "codebooks": f"{levels}x{k}", "mode": "balanced" if balanced else "plain",
            "seconds": round(seconds, 1), "cpu_seconds": round(cpu, 1), "load_avg_1min": round(os.getloadavg()[0], 1),
            "max_over_mean": [round(s["max_over_mean"], 3) for s in levels_st],
            "max_size": [s["max_size"] for s in levels_st], "utilization": [round(s["utilization"], 3) for s in levels_st],
            "residual_error": round(st["residual_error"][-1], 4)}


def _kmc_worker(n: int, k: int, size_max: int, queue) -> None:
    from k_means_constrained import KMeansConstrained

    x = vectors(n)
    t0 = time.perf_counter()
    km = KMeansConstrained(n_clusters=k, size_max=size_max, n_init=1, max_iter=20, random_state=0)
    labels = km.fit_predict(x)
    counts = np.bincount(labels, minlength=k)
    queue.put({"seconds": round(time.perf_counter() - t0, 1), "max_size": int(counts.max()),
               "max_over_mean": round(float(counts.max() / counts.mean()), 3)})


def run_kmc(n: int, k: int, timeout: int) -> dict:
    size_max = rq.capacity(n, k, 0.05)
    queue = mp.get_context("spawn").Queue()
    proc = mp.get_context("spawn").Process(target=_kmc_worker, args=(n, k, size_max, queue))
    t0 = time.perf_counter()
    proc.start()
    proc.join(timeout)
    if proc.is_alive():
        proc.terminate()
        proc.join()
        return {"n": n, "codebooks": f"1x{k}", "mode": "k-means-constrained (1 level)", "seconds": None,
                "timed_out_after_s": timeout, "note": f"did not finish one level in {timeout} s"}
    res = queue.get() if not queue.empty() else {"error": f"exit code {proc.exitcode}"}
    return {"n": n, "codebooks": f"1x{k}", "mode": "k-means-constrained (1 level)", "size_max": size_max,
            "wall_with_startup_s": round(time.perf_counter() - t0, 1), **res}


def markdown(rows: list[dict]) -> str:
    cols = ["n", "codebooks", "mode", "seconds", "cpu_seconds", "load_avg_1min", "max_over_mean", "utilization", "residual_error"]
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c)
            if c == "seconds" and v is None and "timed_out_after_s" in r:
                v = f"> {r['timed_out_after_s']}"
            cells.append("/".join(map(str, v)) if isinstance(v, list) else ("" if v is None else f"{v:,}" if c == "n" else str(v)))
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=["100k", "1m", "kmc"], action="append",
                    help="run only these parts (repeatable; default: all)")
    ap.add_argument("--kmc-timeout", type=int, default=900, help="seconds k-means-constrained may take")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "tokenizer.json"))
    args = ap.parse_args()
    parts = set(args.only or ["100k", "1m", "kmc"])

    rows = []
    for n, part in ((100_000, "100k"), (1_000_000, "1m")):
        if part not in parts:
            continue
        for k in (256, 8192):
            for balanced in (False, True):
                row = run_rq(n, k, balanced)
                rows.append(row)
                print(row, flush=True)
    comparison = {}
    if "kmc" in parts:
        n, k = 20_000, 256
        ours3 = run_rq(n, k, True)
        ours1 = run_rq(n, k, True, levels=1)
        kmc = run_kmc(n, k, args.kmc_timeout)
        rows += [ours1, ours3, kmc]
        kmc_s = kmc.get("seconds") or kmc.get("timed_out_after_s")
        comparison = {"ours_1_level_s": ours1["seconds"], "ours_3_levels_s": ours3["seconds"], "kmc_1_level_s": kmc_s,
                      "kmc_finished": kmc.get("seconds") is not None,
                      # k-means-constrained would need ~3x its one-level time for 3 levels
                      "speedup_1_level": round(kmc_s / max(ours1["seconds"], 1e-3), 1),
                      "speedup_3_levels_lower_bound": round(3 * kmc_s / max(ours3["seconds"], 1e-3), 1),
                      "kmc_max_over_mean": kmc.get("max_over_mean"), "ours_max_over_mean": ours3["max_over_mean"]}
        print(comparison, flush=True)
    print()
    print(markdown(rows))
    out = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                       "load_avg_at_end": os.getloadavg()}, "rows": rows, "kmc_comparison": comparison}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    existing = json.loads(Path(args.out).read_text()) if Path(args.out).exists() and args.only else {}
    if existing:   # partial runs update their rows only
        keep = [r for r in existing.get("rows", []) if (r["n"], r["codebooks"], r["mode"]) not in
                {(r2["n"], r2["codebooks"], r2["mode"]) for r2 in rows}]
        out["rows"] = keep + rows
        out["kmc_comparison"] = comparison or existing.get("kmc_comparison", {})
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
