"""Benchmark: the Spark features job at 1x, 4x and 16x synthetic sizes on local[2].

For each size, a fresh process generates two synthetic days (the generator is not measured), then a
fresh process runs the job on day 1 (no history, cold JVM) and on day 2 from day 1's state (the daily
steady state) and reports wall time, rows/s and peak memory of the driver: the Python process
(ru_maxrss) and the JVM (VmHWM; in local mode the JVM is driver and executor at once, its heap capped
by spark.driver.memory).

    python benchmarks/features.py [--base-users 1000] [--sizes 1 4 16] [--out benchmarks/results]

Writes features.json and features.md (the table) under --out.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DAYS = ("2026-01-01", "2026-01-02")


def world(base_users: int, scale: int) -> dict:
    n = base_users * scale
    return dict(seed=0, n_users=n, new_users_per_day=max(1, n // 100), n_items=2 * n, new_items_per_day=max(1, n // 10),
                n_topics=24, n_authors=max(10, n // 5))


def generate(folder: Path, options: dict) -> dict:
    import pyarrow.parquet as pq

    from onerec.data.synthetic import load
    from onerec.schemas import conform

    rows = {}
    for d in DAYS:
        ds = load(date=d, **options)
        (folder / d).mkdir(parents=True, exist_ok=True)
        for name in ("impressions", "items", "users"):
            t = conform(getattr(ds, name), name)
            pq.write_table(t, folder / d / f"{name}.parquet")
        rows[d] = len(ds.impressions)
    return rows


def _jvm_peak_rss_mb(spark) -> float:
    pid = spark.sparkContext._jvm.java.lang.ProcessHandle.current().pid()
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(folder: Path, master: str) -> dict:
    import pyarrow.parquet as pq

    from onerec.features import spark_job
    from onerec.features.common import Params
    from onerec.features.session import get_spark
    from onerec.schemas import day_start_ms

    t0 = time.time()
    spark, _ = get_spark({"master": master})
    start_s = time.time() - t0
    out, files = {}, None
    for i, d in enumerate(DAYS):
        inp = spark_job.Inputs(day_start_ms(d), *(str(folder / d / f"{n}.parquet") for n in ("impressions", "items", "users")),
                               state=str(files["user_state"]) if files else None,
                               reward_history=str(files["reward_history"]) if files else None)
        t = time.time()
        files = spark_job.run(spark, inp, Params(), folder / f"out-{d}")
        out[f"day{i + 1}_s"] = round(time.time() - t, 2)
    out["spark_start_s"] = round(start_s, 2)
    out["jvm_peak_rss_mb"] = round(_jvm_peak_rss_mb(spark), 1)
    out["python_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    out["state_users"] = pq.ParquetFile(files["user_state"]).metadata.num_rows
    spark.stop()
    return out


def _child(args) -> None:
    folder = Path(args.folder)
    if args.child == "generate":
        print(json.dumps(generate(folder, json.loads(args.options))))
    else:
        print(json.dumps(measure(folder, args.master)))


def _run_child(*argv) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, __file__, *argv], capture_output=True, text=True, env=env, cwd=REPO)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:2])} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def table(results: list[dict]) -> str:
    base = results[0]
    lines = [
        "| size | users | impressions/day | day 1, no history (s) | day 2, from state (s) | rows/s (day 2) "
        "| time vs 1x | rows vs 1x | Python driver peak (MB) | JVM peak RSS (MB) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['scale']}x | {r['n_users']:,} | {r['rows_day2']:,} | {r['day1_s']:.1f} | {r['day2_s']:.1f} "
            f"| {r['rows_day2'] / r['day2_s']:,.0f} | {r['day2_s'] / base['day2_s']:.2f} "
            f"| {r['rows_day2'] / base['rows_day2']:.2f} | {r['python_peak_rss_mb']:.0f} | {r['jvm_peak_rss_mb']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base-users", type=int, default=1000)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--master", default="local[2]")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    ap.add_argument("--child", choices=["generate", "measure"], help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    ap.add_argument("--options", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return _child(args)

    results = []
    for scale in args.sizes:
        options = world(args.base_users, scale)
        with tempfile.TemporaryDirectory(prefix="onerec-bench-features-") as tmp:
            rows = _run_child("--child", "generate", "--folder", tmp, "--options", json.dumps(options))
            r = _run_child("--child", "measure", "--folder", tmp, "--master", args.master)
        r.update(scale=scale, n_users=options["n_users"], rows_day1=rows[DAYS[0]], rows_day2=rows[DAYS[1]])
        results.append(r)
        print(json.dumps(r), flush=True)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"master": args.master, "cpus": os.cpu_count(), "python": platform.python_version(),
            "load_average_at_end": os.getloadavg(), "base_users": args.base_users}
    (out / "features.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    md = render(meta, results)
    (out / "features.md").write_text(md)
    print(md)


def render(meta: dict, results: list[dict]) -> str:
    load = ", ".join(f"{x:.1f}" for x in meta["load_average_at_end"])
    return (f"Spark features job on {meta['master']} ({meta['cpus']} CPUs, load average {load} at the end), "
            f"synthetic world of {meta['base_users']:,} x size users, two days: day 1 without history (cold JVM), "
            f"day 2 from day 1's state.\n\n{table(results)}\n")


if __name__ == "__main__":
    main()
