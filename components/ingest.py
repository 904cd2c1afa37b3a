"""`ingest`: adapter or generator -> the day's impressions, items and users partition.

Impressions are the day's events (UTC day of `ts`); items and users are snapshots of what is known
by the end of the day (first_seen before midnight), so every impression's item is in the snapshot.
File-based sources are digested as external inputs: a changed source file re-ingests the day.
Served feedback (`data.served_feedback`): the impressions that online_validate(D-1)'s challenger arm served
(source = model, gen_prob set; stamped on D) are added to D's impressions, so day D's training sees what the
model served yesterday (OneRec-V2's loop). Their digest is an external input: a redone validation re-ingests D.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from onerec.schemas import DAY_MS, EVENT_KEY, conform, day_start_ms


def _served(ctx):
    """online_validate(D-1) with _SUCCESS and served impressions, when served feedback is on; else None."""
    if not ctx.config["data"].get("served_feedback", True):
        return None
    prev = next(ctx.earlier_done("online_validate", 1), None)
    return prev if prev is not None and prev.store.exists(prev.key("served_impressions.parquet")) else None


def external_inputs(ctx) -> dict:
    data = ctx.config["data"]
    served = _served(ctx)
    inputs = {} if served is None else {"served_feedback": served.digest()}
    if not data.get("path"):
        return inputs
    path = Path(data["path"]).expanduser()
    if not path.exists():
        from onerec.errors import BadInput

        raise BadInput(f"data.path {str(path)!r} does not exist")
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(path) if f != path else f.name).encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return {**inputs, "source": h.hexdigest()}


def _table(x, name: str) -> pa.Table:
    return x if isinstance(x, pa.Table) else conform(x, name)


def _known_by(table: pa.Table, end_ms: int) -> pa.Table:
    if "first_seen" not in table.column_names or table.num_rows == 0:
        return table
    return table.filter(pc.less(table["first_seen"], pa.scalar(end_ms, table["first_seen"].type)))


def _refuse_future(imps: pa.Table, slack_ms: int) -> None:
    """A whole-history source is cut into UTC days; an event stamped after now falls in a partition that no
    run ingests yet, so it would vanish without a word: refuse the source, naming the count and an example."""
    import time

    if imps.num_rows == 0:
        return
    limit = int(time.time() * 1000) + int(slack_ms)
    future = pc.greater(imps["ts"], limit)
    n = pc.sum(future).as_py() or 0
    if n:
        from onerec.errors import BadInput
        from onerec.schemas import date_of

        first = imps.filter(future)["ts"][0].as_py()
        raise BadInput(f"{n} of {imps.num_rows} impressions have a ts in the future (e.g. {first} = "
                       f"{date_of([first])[0]}): fix the source's timestamps")


def run(ctx) -> dict:
    import mlflow

    from onerec.data import load_dataset

    data = ctx.config["data"]
    ds = load_dataset(data["source"], data.get("path"), date=ctx.date, **(data.get("options") or {}))
    start = day_start_ms(ctx.date)
    imps, items, users = _table(ds.impressions, "impressions"), _table(ds.items, "items"), _table(ds.users, "users")
    in_source = imps.num_rows
    if not ds.info.get("sliced"):
        _refuse_future(imps, data.get("max_future_ms", DAY_MS))
        ts = imps["ts"]
        imps = imps.filter(pc.and_(pc.greater_equal(ts, start), pc.less(ts, start + DAY_MS)))
        items, users = _known_by(items, start + DAY_MS), _known_by(users, start + DAY_MS)
        print(f"ingest {ctx.date}: {imps.num_rows} of the source's {in_source} impressions fall on this UTC day",
              flush=True)

    served = _served(ctx)
    n_served = 0
    if served is not None:
        extra = served.read_table("served_impressions")
        ts = extra["ts"]
        extra = extra.filter(pc.and_(pc.greater_equal(ts, start), pc.less(ts, start + DAY_MS)))
        n_served = extra.num_rows
        imps = pa.concat_tables([imps, extra.select(imps.column_names).cast(imps.schema)])
        imps = imps.take(pc.sort_indices(imps, [("ts", "ascending"), ("user_id", "ascending"),
                                                ("item_id", "ascending")]))

    dropped = 0
    if data.get("dedupe") and imps.num_rows:
        # Some public logs repeat events (KuaiRand: 5,885 rows share user, item and ms timestamp). The gate
        # stays strict; a preset opts in to keeping the first of each event key, and the count is recorded.
        dup = imps.select(list(EVENT_KEY)).to_pandas().duplicated(keep="first").to_numpy()
        dropped = int(dup.sum())
        imps = imps.filter(pa.array(~dup))

    uris = {name: ctx.out.write_table(name, t) for name, t in
            (("impressions", imps), ("items", items), ("users", users))}
    for name, t in (("impressions", imps), ("items", items), ("users", users)):
        df = t.slice(0, 100_000).to_pandas() if name != "items" else t.select(["item_id", "first_seen"]).to_pandas()
        mlflow.log_input(mlflow.data.from_pandas(df, source=uris[name], name=f"{name}/{ctx.date}"), context="ingest")
    return {"impressions": imps.num_rows, "items": items.num_rows, "users": users.num_rows,
            "duplicates_dropped": dropped, "served_impressions": n_served, "source": data["source"],
            "source_impressions": in_source}
