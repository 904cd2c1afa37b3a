"""CPU training throughput of the Beauty model: this checkout against an earlier commit, same machine, one run.

    .venv/bin/python benchmarks/train_throughput.py [--baseline 6b151d2] [--rounds 3] [--windows 3] [--steps 20]
        [--threads 2] [--batch 256] [--out benchmarks/results/train_throughput.json]

What is timed: `onerec.train.train` itself (the loop every stage uses: the pre-collated batch taken from
`benchmarks/beauty.py`'s TensorStream, forward, backward, clipping, AdamW, scheduler) on the real Amazon Beauty
training samples (the first 20000, collated once), with the `small` lazy model of `benchmarks/beauty.py`
(4 layers, d 128, 3.3M parameters, 4 SID levels). samples/s per window of `--steps` steps as train() reports it;
the first window (warm-up) is dropped. Beam-search evaluation speed (users/s, beam 32, 1024 test users) is
measured after it, since the protocol evaluates validation users every epoch.

Before vs after: the baseline commit is checked out in a temporary `git worktree` and its `onerec` package and
`benchmarks/beauty.py` are imported in a subprocess; the variants alternate (A B A B ...) so host drift hits both.
The prepared folder (split + SIDs) comes from `benchmarks/beauty.py --prep-only` and is shared.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def worker(args) -> dict:
    """Runs inside the variant's checkout (its onerec and benchmarks/beauty.py come first on sys.path)."""
    root = Path(args.worker_repo)
    sys.path[:0] = [str(root), str(root / "benchmarks")]
    import numpy as np
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    import torch

    import beauty as B
    from onerec import model as M
    from onerec.item.trie import SidTrie
    from onerec.samples import SidTable, with_known_target
    from onerec.train import TrainConfig, train

    torch.set_num_threads(args.threads)
    folder = Path(args.folder)
    stats = json.loads((folder / "sids_ours.json").read_text())
    sids = SidTable.from_table(pq.read_table(folder / "sids_ours.parquet"))
    sizes = sids.vocab_sizes(stats.get("sizes") or [])
    samples = with_known_target(pq.read_table(folder / "samples.parquet"), sids)
    part = lambda s: samples.filter(pc.equal(samples["split"], s))  # noqa: E731
    cfg = B.model_config(B.parse(["--quiet"]), "lazy", sizes)
    torch.manual_seed(0)
    model = M.OneRec(cfg)
    data = B.collate_all(part("train").slice(0, args.samples), cfg, sids, torch.device("cpu"))
    sps = []
    tcfg = TrainConfig(max_steps=args.steps * (args.windows + 1), batch_size=args.batch, lr=2e-3, warmup_steps=10,
                       log_every=args.steps, ckpt_every=10 ** 9, peak_flops=1.0)
    stream = B.TensorStream(data, args.batch, 0, args.length_buckets) if args.length_buckets else \
        B.TensorStream(data, args.batch, 0)
    train(model, stream, tcfg, on_log=lambda step, m: sps.append(m["samples_per_s"]),
          progress=False)
    test = part("test").slice(0, 1024)
    tdata = B.collate_all(test, cfg, sids, torch.device("cpu"))
    trie = SidTrie.build(sids.sids, sids.item_ids)
    t = time.perf_counter()
    B.evaluate(model, tdata, trie, np.asarray(test["item_id"].to_numpy()), 32, 512, "eval", False)
    users_s = test.num_rows / (time.perf_counter() - t)
    return {"samples_per_s": sps[1:], "eval_users_per_s": users_s, "params": model.num_params()}


def run_variant(repo: Path, folder: Path, args, buckets: int = 0) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker-repo", str(repo), "--folder", str(folder),
           "--threads", str(args.threads), "--batch", str(args.batch), "--steps", str(args.steps),
           "--windows", str(args.windows), "--samples", str(args.samples), "--length-buckets", str(buckets)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    if proc.returncode != 0:
        raise SystemExit(f"worker for {repo} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", default="6b151d2", help="commit to compare against")
    ap.add_argument("--rounds", type=int, default=3, help="alternating A/B rounds")
    ap.add_argument("--windows", type=int, default=3, help="timed windows per round (after one warm-up window)")
    ap.add_argument("--steps", type=int, default=20, help="steps per window")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--samples", type=int, default=20000, help="training samples collated (the first N)")
    ap.add_argument("--length-buckets", type=int, default=64, help="the third variant: this checkout with "
                    "beauty.py --length-buckets N (0: leave that variant out)")
    ap.add_argument("--prep-dir", default=str(REPO / ".beauty_prep"))
    ap.add_argument("--out", default=str(RESULTS / "train_throughput.json"))
    ap.add_argument("--worker-repo", help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker_repo:
        print(json.dumps(worker(args)))
        return 0

    sys.path.insert(0, str(REPO / "benchmarks"))
    import beauty

    folder = beauty.prepare(beauty.parse(["--quiet", "--prep-dir", args.prep_dir]), "ours")
    git = lambda *a: subprocess.run(["git", "-C", str(REPO), *a], check=True, capture_output=True, text=True).stdout.strip()  # noqa: E731
    head = git("rev-parse", "--short", "HEAD") + ("+dirty" if git("status", "--porcelain", "--", "onerec") else "")
    base = git("rev-parse", "--short", args.baseline)
    variants = [("baseline", None, 0), ("this", REPO, 0)]
    if args.length_buckets:
        variants.append((f"this + length buckets {args.length_buckets}", REPO, args.length_buckets))
    results = {name: [] for name, _, _ in variants}
    with tempfile.TemporaryDirectory() as tmp:
        wt = Path(tmp) / "baseline"
        git("worktree", "add", "--detach", str(wt), base)
        try:
            for r in range(args.rounds):
                for name, repo, buckets in variants:
                    res = run_variant(repo or wt, folder, args, buckets)
                    results[name].append(res)
                    print(f"round {r} {name:28s} samples/s {statistics.median(res['samples_per_s']):7.0f}  "
                          f"eval users/s {res['eval_users_per_s']:5.0f}", flush=True)
        finally:
            git("worktree", "remove", "--force", str(wt))
    rows = {}
    for name, runs in results.items():
        sps = [x for r in runs for x in r["samples_per_s"]]
        ev = [r["eval_users_per_s"] for r in runs]
        rows[name] = {"commit": base if name == "baseline" else head, "samples_per_s_median": statistics.median(sps),
                      "samples_per_s_min": min(sps), "samples_per_s_max": max(sps),
                      "ms_per_step": 1000 * args.batch / statistics.median(sps), "eval_users_per_s_median": statistics.median(ev),
                      "windows": sps, "params": runs[0]["params"]}
    for r in rows.values():
        r["speedup"] = r["samples_per_s_median"] / rows["baseline"]["samples_per_s_median"]
    print("\n| variant | commit | samples/s median [min, max] | ms/step | speed-up | eval users/s |\n|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['commit']} | {r['samples_per_s_median']:.0f} [{r['samples_per_s_min']:.0f}, "
              f"{r['samples_per_s_max']:.0f}] | {r['ms_per_step']:.1f} | {r['speedup']:.2f}x | {r['eval_users_per_s_median']:.0f} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "command": " ".join(["python", "benchmarks/train_throughput.py", *(sys.argv[1:] if argv is None else argv)]),
        "hardware": {"cpu_count": os.cpu_count(), "threads": args.threads, "platform": platform.platform(),
                     "python": platform.python_version(), "load_average_end": list(os.getloadavg())},
        "setup": {"batch": args.batch, "steps_per_window": args.steps, "windows": args.windows, "rounds": args.rounds,
                  "samples": args.samples, "model": "benchmarks/beauty.py small lazy (4L d128)"},
        "rows": rows}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
