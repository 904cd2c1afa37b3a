"""Serving latency and throughput over HTTP: trie-constrained beam search behind the real FastAPI/uvicorn service.

    .venv/bin/python benchmarks/serving.py [--presets debug,small] [--beams 32,128,512] [--requests 100] [--torch-threads 1]

For each preset, a model with random weights (latency does not depend on the weights) and a synthetic trie of
8192 items over a 256 x 256 x 256 codebook are written as a bundle and served by `python -m onerec.serving
--bundle` in its own process (OMP_NUM_THREADS=2; the inference thread uses `--torch-threads`, the service's
`torch_threads`). The client posts an explicit 50-event history:
  latency      sequential requests, p50/p99 of the client-side round trip;
  throughput   requests/s with `--concurrency` client threads;
  FLOP/s       FLOPs of one request (torch.utils.flop_counter over the same recommend call in-process)
               / p50 latency, against a measured float32 matmul peak on this machine with the inference thread's
               thread count.
Target: small preset, beam 128, p99 <= 20 ms on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from onerec import decoding  # noqa: E402
from onerec import model as M  # noqa: E402

RESULTS = Path(__file__).parent / "results"
CODEBOOK = (256, 256, 256)
N_ITEMS = 8192
THREADS = 2


def write_bundle(folder: Path, preset: str, seed: int = 0) -> M.ModelConfig:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from safetensors.torch import save_file

    from onerec.item.trie import SidTrie

    torch.manual_seed(seed)
    cfg = M.build(preset, codebook_sizes=CODEBOOK)
    model = M.OneRec(cfg)
    rng = np.random.default_rng(seed)
    # clustered like RQ-KMeans output: 64 coarse clusters in use, finer levels spread inside them
    sids = np.stack([rng.integers(0, 64, N_ITEMS) * 4 % 256, rng.integers(0, 256, N_ITEMS),
                     rng.integers(0, 256, N_ITEMS)], axis=1)
    items = np.arange(N_ITEMS, dtype=np.int64) + 1
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "model.safetensors")
    (folder / "model.json").write_text(json.dumps({"model_config": dataclasses.asdict(cfg), "codebook_digest": "bench"}))
    (folder / "codebook.json").write_text(json.dumps({"digest": "bench", "sizes": list(CODEBOOK)}))
    (folder / "trie.safetensors").write_bytes(SidTrie.build(sids, items).to_bytes())
    offsets = pa.array(np.arange(0, sids.size + 1, 3, dtype=np.int32))
    pq.write_table(pa.table({"item_id": pa.array(items), "sid": pa.ListArray.from_arrays(offsets, pa.array(sids.ravel().astype("int32")))}),
                   folder / "sids.parquet")
    return cfg


def history(seed: int, n: int = 50) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"item_id": int(i), "play_time_ms": int(rng.integers(1000, 30000)), "duration_ms": 20000,
             "like": bool(rng.random() < 0.2)} for i in rng.integers(1, N_ITEMS + 1, n)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def matmul_peak(threads: int, n: int = 1024, reps: int = 20) -> float:
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t)


def request_flops(folder: Path, beam: int, n: int) -> float:
    """FLOPs of one request: the same collate + beam search the service runs, counted by torch."""
    from torch.utils.flop_counter import FlopCounterMode

    from onerec import model_registry
    from onerec.samples import collate_record
    from onerec.serving import Event, _history_record

    b = model_registry.read_bundle(folder)
    batch = collate_record(*_history_record([Event(**e) for e in history(0)]), b.model.cfg, b.sids)
    with FlopCounterMode(display=False) as counter:
        decoding.recommend(b.model, batch, b.trie, n, beam)
    return float(counter.get_total_flops())


def serve(folder: Path, port: int, torch_threads: int = 1) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS), "MKL_NUM_THREADS": str(THREADS)}
    proc = subprocess.Popen([sys.executable, "-m", "onerec.serving", "--bundle", str(folder), "--port", str(port),
                             "--poll-s", "0", "--torch-threads", str(torch_threads)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    import httpx

    for _ in range(600):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(proc.stderr.read().decode()[-2000:])
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("server did not start")


def measure(port: int, beam: int, n: int, requests: int, concurrency: int) -> dict:
    import httpx

    url = f"http://127.0.0.1:{port}/recommend"
    bodies = [{"history": history(i), "n": n, "beam_size": beam} for i in range(requests)]
    with httpx.Client(timeout=60) as client:
        for body in bodies[:5]:                       # warm-up
            client.post(url, json=body).raise_for_status()
        lat = []
        for body in bodies:
            t = time.perf_counter()
            r = client.post(url, json=body)
            lat.append(time.perf_counter() - t)
            r.raise_for_status()
            assert all(it["gen_prob"] > 0 for it in r.json()["items"])

    def one(body):
        with httpx.Client(timeout=60) as c:
            for _ in range(max(1, requests // concurrency)):
                c.post(url, json=body).raise_for_status()

    t = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, bodies[:concurrency]))
    done = concurrency * max(1, requests // concurrency)
    lat_ms = np.array(lat) * 1000
    return {"p50_ms": float(np.percentile(lat_ms, 50)), "p99_ms": float(np.percentile(lat_ms, 99)),
            "mean_ms": float(lat_ms.mean()), "throughput_rps": done / (time.perf_counter() - t)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--presets", default="debug,small")
    ap.add_argument("--beams", default="32,128,512")
    ap.add_argument("--requests", type=int, default=100)
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--n", type=int, default=10, help="items per response")
    ap.add_argument("--torch-threads", type=int, default=1, help="the service's torch_threads")
    a = ap.parse_args()

    peak = matmul_peak(a.torch_threads)
    rows = []
    with tempfile.TemporaryDirectory(prefix="onerec-bench-serving-") as tmp:
        for preset in a.presets.split(","):
            folder = Path(tmp) / preset
            cfg = write_bundle(folder, preset)
            port = free_port()
            proc = serve(folder, port, a.torch_threads)
            try:
                for beam in map(int, a.beams.split(",")):
                    flops = request_flops(folder, beam, a.n)
                    m = measure(port, beam, a.n, a.requests, a.concurrency)
                    achieved = flops / (m["p50_ms"] / 1000)
                    rows.append({"preset": preset, "params": M.OneRec(cfg).num_params(), "beam": beam, **m,
                                 "mflops_per_request": flops / 1e6, "achieved_gflops": achieved / 1e9,
                                 "peak_fraction": achieved / peak, "load_avg_1min": os.getloadavg()[0]})
                    r = rows[-1]
                    print(f"{preset:6s} beam {beam:4d}: p50 {r['p50_ms']:7.2f} ms  p99 {r['p99_ms']:7.2f} ms  "
                          f"{r['throughput_rps']:7.1f} req/s  {r['mflops_per_request']:8.1f} MFLOP  "
                          f"{r['achieved_gflops']:6.2f} GFLOP/s ({100 * r['peak_fraction']:.1f}% of peak)", flush=True)
            finally:
                proc.terminate()
                proc.wait(timeout=30)

    lines = [f"service torch_threads {a.torch_threads}; matmul peak ({a.torch_threads} threads, float32 1024^3): "
             f"{peak / 1e9:.1f} GFLOP/s; {N_ITEMS} items, "
             f"codebook {CODEBOOK}, {a.requests} sequential requests, throughput with {a.concurrency} clients", "",
             "| preset | params | beam | p50 ms | p99 ms | req/s | MFLOP/request | GFLOP/s | % of matmul peak |",
             "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['preset']} | {r['params'] / 1e6:.2f}M | {r['beam']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
              f"{r['throughput_rps']:.1f} | {r['mflops_per_request']:.1f} | {r['achieved_gflops']:.2f} | "
              f"{100 * r['peak_fraction']:.1f} |" for r in rows]
    target = [r for r in rows if r["preset"] == "small" and r["beam"] == 128]
    if target:
        lines.append(f"\ntarget (small, beam 128, p99 <= 20 ms): {target[0]['p99_ms']:.1f} ms -> "
                     f"{'met' if target[0]['p99_ms'] <= 20 else 'NOT met'}")
    print("\n".join(lines))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "serving.json").write_text(json.dumps({"threads": THREADS, "torch_threads": a.torch_threads,
                                                      "matmul_peak_gflops": peak / 1e9,
                                                      "items": N_ITEMS, "codebook": CODEBOOK, "requests": a.requests,
                                                      "concurrency": a.concurrency, "n": a.n, "rows": rows}, indent=2))
    (RESULTS / "serving.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
