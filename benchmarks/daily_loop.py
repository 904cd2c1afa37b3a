"""Seven days of the synthetic world through the whole daily pipeline, every model scored by the world itself.

    .venv/bin/python benchmarks/daily_loop.py [--home /tmp/onerec_daily_loop] [--days 7] [--requests 400]
                                              [--config configs/demo.yaml] [--set key=value ...]

Runs `onerec pipeline run --start 2026-01-01 --end <day 7> --config <config>` (the real CLI, every stage, the
online A/B scored by the world, promotion; reused when already there). Then, for every day D from day 2 on, a
stable hashed subset of D's logged requests (`--requests`) is served by the models the pipeline trained on D-1:
pretrain(D-1), sft(D-1), rl(D-1), and the champion that served D (the newest promoted candidate up to D-1). Each
model answers each request with a page of 6 items (trie-constrained beam search over the request's context as of
its time, features(D) samples: leak-free), and the world (onerec.data.synthetic.WorldSimulator) draws the user's
response to every item of the page with the same seed for every model (common random numbers). The true stay time
of a request is the sum of the drawn play times (s). Reported per day: mean +- 95% interval per model, and the
paired differences rl - sft and sft - pretrain (same requests). The champion's growth: the day-7 champion against
the first champion on the same day-7 requests (paired interval).
Writes benchmarks/results/daily_loop.{json,md,png}; the plot is also logged to MLflow (experiment
onerec-benchmarks in --home).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from publish import publish  # noqa: E402  (benchmarks/publish.py: the script's own folder is on sys.path)
RESULTS = REPO / "benchmarks" / "results"
PAGE = 6
Z95 = 1.959964


def ci(x) -> dict:
    x = np.asarray(x, np.float64)
    half = Z95 * x.std(ddof=1) / np.sqrt(len(x)) if len(x) > 1 else float("nan")
    return {"mean": float(x.mean()), "lo": float(x.mean() - half), "hi": float(x.mean() + half), "n": int(len(x))}


def run_pipeline(home: Path, config: str, start: str, end: str, sets: list[str]) -> dict:
    env = {**os.environ, "ONEREC_HOME": str(home), "SPARK_LOCAL_IP": "127.0.0.1"}
    cmd = [sys.executable, "-m", "components.cli", "pipeline", "run", "--start", start, "--end", end, "--config", config]
    for s in sets:
        cmd += ["--set", s]
    print("onerec", " ".join(cmd[3:]), flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env)
    return {"returncode": proc.returncode, "seconds": round(time.perf_counter() - t0, 1)}


def champions(store, days: list[str]) -> dict:
    """day -> the candidate ("pipeline/date/stage") that was champion while day's traffic was served."""
    from onerec.store import StageDir

    current, out = None, {}
    for day in days:
        out[day] = current
        d = StageDir(store, "daily", day, "promote")
        try:
            decision = json.loads(d.read_bytes("decision.json"))
        except Exception:   # promote did not run that day (an earlier gate stopped the date)
            continue
        if decision.get("decision") == "promoted":
            current = decision["candidate"]
    return out


def serve_pages(model, tok_dir, contexts, rows: np.ndarray, beam: int) -> np.ndarray:
    """(R, PAGE) item ids of each request's page (-1 where the model returned fewer)."""
    from onerec import evaluation
    from onerec.item.trie import SidTrie
    from onerec.samples import SidTable

    import pyarrow as pa

    trie = SidTrie.from_bytes(tok_dir.read_bytes("trie.safetensors"))
    sids = SidTable.from_table(tok_dir.read_table("sids"))
    ranking = evaluation.rank(model, trie, sids, contexts.table.take(pa.array(rows)), PAGE, beam, batch_size=64)
    pages = np.full((len(rows), PAGE), -1, np.int64)
    for i, items in enumerate(ranking.items):
        pages[i, :min(PAGE, len(items))] = items[:PAGE]
    return pages


def stay_time(world, users, ts, pages, seed) -> np.ndarray:
    """True stay time (s) per request: the world's drawn play times of the page, summed (common random numbers:
    the draw for page slot j of request r uses the same seed whatever the model)."""
    R = len(users)
    flat = pages.reshape(-1)
    ok = flat >= 0
    play = np.zeros(len(flat))
    resp = world.respond(np.repeat(users, PAGE)[ok], flat[ok], np.repeat(ts, PAGE)[ok], seed=seed)
    play[ok] = resp["play_time_ms"] / 1000.0
    return play.reshape(R, PAGE).sum(1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--home", default="/tmp/onerec_daily_loop")
    ap.add_argument("--config", default=str(REPO / "configs" / "demo.yaml"))
    ap.add_argument("--start", default="2026-01-01")
    ap.add_argument("--days", type=int, default=7)
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--beam", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], help="config override passed to the pipeline")
    ap.add_argument("--out", default=str(RESULTS / "daily_loop.json"))
    args = ap.parse_args()
    import torch

    from components.common import load_model
    from onerec import online
    from onerec.config import load_config, resolved
    from onerec.data.synthetic import WorldSimulator
    from onerec.serving import Contexts
    from onerec.store import StageDir, open_store

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    t0 = time.perf_counter()
    home = Path(args.home)
    start = dt.date.fromisoformat(args.start)
    days = [(start + dt.timedelta(days=i)).isoformat() for i in range(args.days)]
    pipeline = run_pipeline(home, args.config, days[0], days[-1], args.set)
    cfg = resolved(load_config(args.config, args.set))
    world = WorldSimulator(**(cfg["data"].get("options") or {}))
    store = open_store(str(home / "artifacts"))
    champ = champions(store, days)
    first_champion = next((c for c in champ.values() if c), None)
    per_day, stay = {}, {}
    for k, day in enumerate(days[1:], start=1):
        prev = days[k - 1]
        ingest, features = StageDir(store, "daily", day, "ingest"), StageDir(store, "daily", day, "features")
        if not (ingest.is_done() and features.is_done()):
            print(f"{day}: ingest/features not done, skipped", flush=True)
            continue
        reqs = online.requests_of_day(ingest.read_table("impressions"), args.requests, "daily-loop")
        contexts = Contexts(features.read_table("samples"))
        rows = contexts.rows(reqs.user_id, reqs.ts)
        keep = rows >= 0
        users, ts, rows = reqs.user_id[keep], reqs.ts[keep], rows[keep]
        arms = {f"{s}": f"daily/{prev}/{s}" for s in ("pretrain", "sft", "rl")}
        if champ[day]:
            arms["champion"] = champ[day]
        if day == days[-1] and first_champion and first_champion != champ[day]:
            arms["first champion"] = first_champion
        seed = [args.seed, k]
        stay[day] = {}
        for arm, path in arms.items():
            _, date, stage = path.split("/")
            d = StageDir(store, "daily", date, stage)
            if not d.is_done():
                continue
            model, _ = load_model(d)
            pages = serve_pages(model, StageDir(store, "daily", date, "tokenize"), contexts, rows, args.beam)
            stay[day][arm] = stay_time(world, users, ts, pages, seed)
        logged = np.array([sum(float(v["play_time_ms"]) for v in lg.values()) / 1000.0
                           for lg, ok in zip(reqs.logged, keep) if ok])
        s = stay[day]
        entry = {"requests": int(len(users)), "models": {a: {"path": arms[a], **ci(v)} for a, v in s.items()},
                 "logged_legacy_page": ci(logged)}
        for a, b in (("rl", "sft"), ("sft", "pretrain"), ("champion", "sft"), ("rl", "champion")):
            if a in s and b in s:
                entry[f"{a} - {b}"] = ci(s[a] - s[b])
        if "first champion" in s and "champion" in s:
            entry["champion - first champion"] = ci(s["champion"] - s["first champion"])
        per_day[day] = entry
        print(day, json.dumps({a: round(m["mean"], 2) for a, m in entry["models"].items()}), flush=True)

    days_scored = list(per_day)
    wins = {pair: sum(1 for d in days_scored if pair in per_day[d] and per_day[d][pair]["mean"] > 0)
            for pair in ("rl - sft", "sft - pretrain")}
    last = per_day.get(days[-1], {})
    growth = last.get("champion - first champion")
    bars = [{"bar": "rl > sft on true stay time, most days", "value": f"{wins['rl - sft']}/{len(days_scored)}",
             "met": wins["rl - sft"] > len(days_scored) / 2},
            {"bar": "sft > pretrain on true stay time, most days", "value": f"{wins['sft - pretrain']}/{len(days_scored)}",
             "met": wins["sft - pretrain"] > len(days_scored) / 2},
            {"bar": "day-7 champion > first champion (same requests), interval above 0",
             "value": "-" if growth is None else f"{growth['mean']:+.2f} s [{growth['lo']:+.2f}, {growth['hi']:+.2f}]",
             "met": bool(growth is not None and growth["lo"] > 0)}]
    table = markdown(per_day, bars, champ)
    fig = figure(per_day)
    result = {"command": " ".join([".venv/bin/python", "benchmarks/daily_loop.py", *sys.argv[1:]]),
              "days": days, "pipeline": pipeline, "champions": champ, "per_day": per_day, "bars": bars,
              "args": vars(args), "total_s": round(time.perf_counter() - t0, 1),
              "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "load_average_end": os.getloadavg()}}
    publish(args.out, result, table, fig, home,
            {"days": len(days), "requests": args.requests, "config": Path(args.config).name},
            [{}] + [{f"true_stay_s.{a}": m["mean"] for a, m in per_day[d]["models"].items()} for d in days_scored])
    print(table)
    print(f"total {result['total_s']} s (pipeline {pipeline['seconds']} s, exit {pipeline['returncode']}); wrote {args.out}")
    return 0


def markdown(per_day: dict, bars: list, champ: dict) -> str:
    def f(m):
        return f"{m['mean']:.2f} [{m['lo']:.2f}, {m['hi']:.2f}]"

    lines = ["True stay time per request (s, sum of the world's play times over a page of 6), mean [95% interval]", "",
             "| day | requests | pretrain | sft | rl | champion (serving that day) | rl - sft | sft - pretrain | legacy page (logged) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for d, e in per_day.items():
        m = e["models"]
        cell = lambda a: f(m[a]) if a in m else "-"  # noqa: E731
        diff = lambda p: f(e[p]) if p in e else "-"  # noqa: E731
        lines.append(f"| {d} | {e['requests']} | {cell('pretrain')} | {cell('sft')} | {cell('rl')} | "
                     f"{cell('champion')} ({m['champion']['path'] if 'champion' in m else 'none'}) | {diff('rl - sft')} | "
                     f"{diff('sft - pretrain')} | {f(e['logged_legacy_page'])} |")
    lines += ["", "| bar (issue #20) | measured | met |", "|---|---|---|"]
    lines += [f"| {b['bar']} | {b['value']} | {'yes' if b['met'] else 'NO'} |" for b in bars]
    lines += ["", "Champion serving each day: " + ", ".join(f"{d}: {c or 'none'}" for d, c in champ.items())]
    return "\n".join(lines) + "\n"


def figure(per_day: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    days = list(per_day)
    for j, arm in enumerate(("pretrain", "sft", "rl", "champion")):
        xs = [i + (j - 1.5) * 0.08 for i, d in enumerate(days) if arm in per_day[d]["models"]]
        ms = [per_day[d]["models"][arm] for d in days if arm in per_day[d]["models"]]
        if ms:
            ax.errorbar(xs, [m["mean"] for m in ms], yerr=[[m["mean"] - m["lo"] for m in ms], [m["hi"] - m["mean"] for m in ms]],
                        fmt="o-", capsize=3, label=arm)
    legacy = [per_day[d]["logged_legacy_page"]["mean"] for d in days]
    ax.plot(range(len(days)), legacy, "k--", lw=1, label="legacy page (logged)")
    ax.set_xticks(range(len(days)), [d[5:] for d in days])
    ax.set(xlabel="day (models trained up to the day before)", ylabel="true stay time per request (s)",
           title="Daily loop on the synthetic world: stay time drawn by the world")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    sys.exit(main())
