"""`features`: the Spark feature job (onerec.features.spark_job) for day D, behind the GX gate.

Reads ingest(D) (validated), the user history and, when there is one, item vectors; writes
  samples.parquet         one training sample per impression of D (newest-impression organisation):
                          target + labels + static profile + short-term / positive / long-term pathways + q
  rewards.parquet         per impression: duration bucket, bucket history length, percentile rank q
  reward_history.parquet  per (user, bucket): the most recent play times as of the end of D
  user_state.parquet      per user: the compact state day D+1 starts from (also the end-of-day context)
  item_stats.parquet      per item: the day's exposures, plays, completions, likes, dislikes, first seen
  expectations.json       the gate's report
The outputs are one parquet file each in the stage directory, which is already per date.

History, first match wins (declared as external inputs, so a changed history recomputes the day):
1. features(D-1) finished with the same `features` config on the ingest(D-1) that exists now: its state;
2. else the newest such features(d0), d0 < D, plus the raw impressions of every validated day in (d0, D);
3. else the raw impressions of every validated day before D (none: an empty history).
Both ways give identical outputs (tests/data/test_features_reference.py proves it); the state keeps the
daily cost independent of the number of days.
Item vectors: the newest embed(d) with vectors.parquet, D - lookback_days <= d < D; else content vectors.

Spark I/O: a local store hands Spark its files' paths; with s3:// the inputs are copied to a local
temp dir and the outputs uploaded through the StageDir (hadoop-aws is not bundled; a production cluster
can instead point Spark at s3a:// paths and skip the copies).
"""
from __future__ import annotations

import datetime as dt
import hashlib
import importlib
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from onerec.config import section_hash
from onerec.errors import BadInput
from onerec.schemas import day_start_ms
from onerec.store import LocalStore, StageDir


@dataclass
class Plan:
    state: StageDir | None = None                            # features(d0) whose state day D starts from
    history: list[StageDir] = field(default_factory=list)    # ingest(d) of days after d0 (or all) before D
    vectors: StageDir | None = None                          # embed(d) holding vectors.parquet

    def describe(self) -> str:
        parts = [f"state of {self.state.date}" if self.state else "no state"]
        if self.history:
            parts.append(f"raw impressions of {len(self.history)} day(s) {self.history[0].date}..{self.history[-1].date}")
        return " + ".join(parts)


def _usable_state(ctx, sd: StageDir) -> bool:
    if not sd.is_done():
        return False
    m = sd.manifest()
    if m.get("config_hash") != section_hash(ctx.config, ctx.stage.config_keys):
        return False   # computed with other parameters (e.g. short_len): its state cannot be extended
    ingest = ctx.dir("ingest", sd.date)
    return ingest.is_done() and (m.get("input_digests") or {}).get("ingest") == ingest.digest()


def _done_dates(ctx, stages) -> dict[str, set[str]]:
    """Dates before D on which each of `stages` has a _SUCCESS (one listing of the pipeline's prefix)."""
    found = {s: set() for s in stages}
    for key in ctx.store.list(f"{ctx.pipeline}/"):
        parts = key.split("/")
        if len(parts) == 4 and parts[3] == "_SUCCESS" and parts[2] in found and parts[1] < ctx.date:
            found[parts[2]].add(parts[1])
    return found


def plan(ctx) -> Plan:
    from onerec.features.common import Params

    p = Params.from_config(ctx.section)
    d = dt.date.fromisoformat(ctx.date)
    out = Plan()
    prev = ctx.dir("features", (d - dt.timedelta(days=1)).isoformat())
    if _usable_state(ctx, prev):
        out.state = prev
    else:
        dates = _done_dates(ctx, ("features", "ingest", "validate"))
        for day in sorted(dates["features"], reverse=True):
            if _usable_state(ctx, ctx.dir("features", day)):
                out.state = ctx.dir("features", day)
                break
        since = out.state.date if out.state else ""
        out.history = [ctx.dir("ingest", day) for day in sorted(dates["ingest"] & dates["validate"]) if since < day]
    for i in range(1, p.embed_lookback_days + 1):
        e = ctx.dir("embed", (d - dt.timedelta(days=i)).isoformat())
        if e.is_done() and "vectors.parquet" in (e.manifest().get("outputs") or {}):
            out.vectors = e
            break
    return out


def external_inputs(ctx) -> dict:
    pl = plan(ctx)
    inputs = {f"state:{pl.state.date}": pl.state.digest()} if pl.state else {}
    inputs.update({f"history:{sd.date}": sd.digest() for sd in pl.history})
    if pl.vectors:
        inputs[f"vectors:{pl.vectors.date}"] = pl.vectors.digest()
    return inputs


def _local(sd: StageDir, name: str, tmp: Path) -> str:
    """A path Spark can read: the file itself in a local store, else a copy in `tmp`."""
    if isinstance(sd.store, LocalStore):
        return str(sd.store.root / sd.key(name))
    path = tmp / "in" / sd.date / sd.stage / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(sd.read_bytes(name))
    return str(path)


def _put(sd: StageDir, name: str, path: Path) -> None:
    """Publish a local file as output `name` (atomically; its digest goes into the manifest)."""
    if not isinstance(sd.store, LocalStore):
        sd.write_bytes(name, path.read_bytes())
        return
    h, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
            size += len(chunk)
    dest = sd.store.root / sd.key(name)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.copyfile(path, tmp)
    os.replace(tmp, dest)
    sd.outputs[name] = {"sha256": h.hexdigest(), "bytes": size}


def _import_quietly(module: str) -> None:
    try:
        importlib.import_module(module)
    except Exception:   # the gate imports it again and reports the error there
        pass


def run(ctx) -> dict:
    import mlflow
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from onerec.features import spark_job
    from onerec.features.common import Params
    from onerec.features.expectations import check_frames, summary, validate_outputs
    from onerec.features.session import get_spark

    p = Params.from_config(ctx.section)
    pl = plan(ctx)
    ingest = ctx.upstream("ingest")
    ctx.upstream("validate")
    start = day_start_ms(ctx.date)
    with tempfile.TemporaryDirectory(prefix="onerec-features-") as tmpdir:
        tmp = Path(tmpdir)
        inp = spark_job.Inputs(
            day_start_ms=start,
            impressions=_local(ingest, "impressions.parquet", tmp), items=_local(ingest, "items.parquet", tmp),
            users=_local(ingest, "users.parquet", tmp),
            history=[_local(sd, "impressions.parquet", tmp) for sd in pl.history],
            state=_local(pl.state, "user_state.parquet", tmp) if pl.state else None,
            reward_history=_local(pl.state, "reward_history.parquet", tmp) if pl.state else None,
            vectors=_local(pl.vectors, "vectors.parquet", tmp) if pl.vectors else None)
        print(f"features {ctx.date}: history = {pl.describe()}; item vectors = "
              f"{'embed ' + pl.vectors.date if pl.vectors else 'content hashing'}", flush=True)
        t0 = time.time()
        spark, owned = get_spark(ctx.config.get("spark"))
        t1 = time.time()
        try:
            frames = spark_job.build(spark, inp, p)
            # Great Expectations takes ~6 s to import: do it while Spark works (the driver thread only
            # waits on the JVM from here on, so the two imports cannot interleave).
            preload = threading.Thread(target=_import_quietly, args=("great_expectations",), daemon=True)
            preload.start()
            files = spark_job.write(frames, tmp / "out")
        finally:
            if owned:
                spark.stop()
        t2 = time.time()

        preload.join()
        day = pq.read_table(inp.impressions, columns=["user_id", "item_id"])
        n_users, n_items = len(pc.unique(day["user_id"])), len(pc.unique(day["item_id"]))
        frames = check_frames(files)
        report = validate_outputs(frames, p, n_impressions=day.num_rows, n_users=n_users, n_items=n_items,
                                  day_start_ms=start)
        failed = sum(not r["success"] for r in report["results"])
        mlflow.log_dict(report, "features/expectations.json")
        mlflow.log_metrics({"expectations": len(report["results"]), "expectations_failed": failed})
        if not report["success"]:
            mlflow.set_tag("onerec.gate", "failed")
            raise BadInput(f"features expectations failed for {ctx.date}: {summary(report)}")
        for name, path in files.items():
            _put(ctx.out, f"{name}.parquet", path)
        ctx.out.write_json("expectations.json", report)
        t3 = time.time()
    print(f"features {ctx.date}: spark start {t1 - t0:.1f}s, job {t2 - t1:.1f}s, gate + upload {t3 - t2:.1f}s",
          flush=True)

    s, items = frames["samples"], frames["item_stats"]
    mlflow.set_tags({"onerec.features.history": pl.describe(),
                     "onerec.features.vectors": f"embed:{pl.vectors.date}" if pl.vectors else "content"})
    return {
        "samples": len(s), "users": n_users, "state_users": len(frames["user_state"]),
        "short_len_mean": round(float(s["short_len"].mean()), 4) if len(s) else 0.0,
        "pos_len_mean": round(float(s["pos_len"].mean()), 4) if len(s) else 0.0,
        "long_len_mean": round(float(s["long_len"].mean()), 4) if len(s) else 0.0,
        "q_defined_share": round(float(s["q"].notna().mean()), 4) if len(s) else 0.0,
        "q_mean": round(float(s["q"].mean()), 4) if s["q"].notna().any() else 0.0,
        "items_exposed": int((items["exposures"] > 0).sum()),
        "new_items_exposed": int(((items["exposures"] > 0) & (items["is_new"] == True)).sum()),  # noqa: E712
        "history_days_raw": len(pl.history), "from_state": bool(pl.state),
        "vectors": "embed" if pl.vectors else "content", "expectations": len(report["results"]),
        "spark_start_s": round(t1 - t0, 2), "spark_job_s": round(t2 - t1, 2), "gate_s": round(t3 - t2, 2),
    }
