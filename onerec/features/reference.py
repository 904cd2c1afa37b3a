"""A small pandas reference for every output of the features job, written for obviousness, not speed.

It always starts from the raw history (every earlier impression), never from a carried state, and
answers each question literally ("the user's events with ts < t, the last 20 of them"), so the tests
check both the Spark logic and the claim that a day computed from yesterday's state equals a day
computed from the whole history. The long-term k-means is the shared numpy kernel in `longterm`.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from onerec.features import longterm
from onerec.features.common import (EVENT_FIELDS, ITEM_STATS, ORDER, PROFILE_PREFIX, REWARD_HISTORY, REWARDS,
                                    SAMPLES, SORT_KEYS, USER_STATE, Params)
from onerec.features.reward import duration_bucket, is_positive, percentile_rank
from onerec.schemas import FLAGS, IMPRESSIONS

_COLS = list(IMPRESSIONS.names)


def _frame(table) -> pd.DataFrame:
    if table is None:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in _COLS})
    t = table if isinstance(table, pa.Table) else pa.Table.from_pandas(table, preserve_index=False)
    return t.to_pandas(types_mapper=lambda ty: pd.Int64Dtype() if pa.types.is_integer(ty) else None)


def _val(x):
    """numpy / pandas scalars and arrays -> plain Python (None for missing)."""
    if x is None or x is pd.NA:
        return None
    if isinstance(x, np.ndarray):
        return [_val(v) for v in x]
    if isinstance(x, list):
        return [_val(v) for v in x]
    if isinstance(x, float) and x != x:
        return None
    return x.item() if hasattr(x, "item") else x


def features(day: pa.Table, items: pa.Table, users: pa.Table, history: pa.Table | None, *, day_start_ms: int,
             params: Params | None = None, vectors: pa.Table | None = None) -> dict[str, pa.Table]:
    """Every output for day D from the day's impressions, items and users plus ALL earlier impressions."""
    p = params or Params()
    d = _frame(day)
    h = _frame(history)
    d["_day"], h["_day"] = True, False
    ev = pd.concat([h, d], ignore_index=True) if len(h) else d.copy()
    ev = ev.sort_values(["user_id", *ORDER], kind="stable").reset_index(drop=True)
    ev["_day"] = ev["_day"].astype(bool)
    ev["_pos"] = is_positive(ev, p.positive_flags, p.long_view_ms, p.long_view_ratio)
    ev["_bucket"] = duration_bucket(ev["duration_ms"].astype("float64").to_numpy(), p.beta, p.eps, p.unit_ms)
    ev["_valid"] = ev["play_time_ms"].notna().to_numpy() & ~np.isnan(ev["_bucket"].to_numpy())

    it = items.select(["item_id", "author_id", "tags"]).to_pylist()
    attrs = {r["item_id"]: (r["author_id"], r["tags"]) for r in it}
    author = lambda i: attrs.get(i, (None, None))[0]  # noqa: E731
    tags = lambda i: attrs.get(i, (None, None))[1]    # noqa: E731
    vec = None
    if vectors is not None:
        vec = {r["item_id"]: r["vector"] for r in vectors.select(["item_id", "vector"]).to_pylist()}

    ev["_bucket"] = pd.Series([None if np.isnan(b) else int(b) for b in ev["_bucket"]], index=ev.index, dtype=object)
    records = [{k: _val(v) for k, v in r.items()} for r in ev.to_dict("records")]
    by_user: dict[int, list[dict]] = {}
    for r in records:                       # already in (user, ts, item_id, request_id) order
        by_user.setdefault(r["user_id"], []).append(r)

    samples, rewards, states, histories = [], [], [], []
    for uid, E in by_user.items():
        # -- user context as of each of the day's impressions --------------------------------
        if any(e["_day"] for e in E):
            long = _long(uid, [e for e in E if e["ts"] < day_start_ms], p, author, tags, vec)
        for t in (e for e in E if e["_day"]):
            past = [e for e in E if e["ts"] < t["ts"]]          # strictly before: same-ms events excluded
            short = past[-p.short_len:]
            pos = [e for e in past if e["_pos"]][-p.positive_len:]
            bucket = t["_bucket"]
            hist = [] if bucket is None else \
                [e["play_time_ms"] for e in past if e["_valid"] and e["_bucket"] == bucket][-p.bucket_history:]
            q = None
            if bucket is not None and t["play_time_ms"] is not None:
                q = percentile_rank(np.array(hist, dtype=np.int64), t["play_time_ms"], p.empty_q)
            row = {c: t[c] for c in _COLS}
            row.update(author_id=author(t["item_id"]), tags=tags(t["item_id"]), bucket=bucket,
                       bucket_history_len=len(hist), q=q)
            row.update(short_item_id=[e["item_id"] for e in short], short_author_id=[author(e["item_id"]) for e in short],
                       short_tags=[tags(e["item_id"]) for e in short], short_ts=[e["ts"] for e in short],
                       short_play_time_ms=[e["play_time_ms"] for e in short],
                       short_duration_ms=[e["duration_ms"] for e in short],
                       **{f"short_{f}": [e[f] for e in short] for f in FLAGS})
            row.update(pos_item_id=[e["item_id"] for e in pos], pos_author_id=[author(e["item_id"]) for e in pos],
                       pos_ts=[e["ts"] for e in pos], pos_play_time_ms=[e["play_time_ms"] for e in pos],
                       pos_duration_ms=[e["duration_ms"] for e in pos])
            row.update(long)
            samples.append(row)
            rewards.append({k: row[k] for k in REWARDS.names})
        # -- the state as of the end of the day ------------------------------------------------
        last_seen = {}
        for e in E:
            last_seen[e["item_id"]] = max(last_seen.get(e["item_id"], e["ts"]), e["ts"])
        life = sorted((ts, item) for item, ts in last_seen.items())[-p.lifelong_len:]
        states.append({"user_id": uid, "n_events": len(E), "last_ts": max(e["ts"] for e in E),
                       "short": [{f: e[f] for f in EVENT_FIELDS} for e in E[-p.short_len:]],
                       "positive": [{f: e[f] for f in EVENT_FIELDS} for e in [e for e in E if e["_pos"]][-p.positive_len:]],
                       "lifelong": [{"ts": ts, "item_id": item} for ts, item in life]})
        for b in sorted({e["_bucket"] for e in E if e["_valid"]}):
            plays = [e for e in E if e["_valid"] and e["_bucket"] == b][-p.bucket_history:]
            histories.append({"user_id": uid, "bucket": b, "history": [
                {k: e[k] for k in ("ts", "item_id", "request_id", "play_time_ms")} for e in plays]})

    samples_t = _profile(pa.Table.from_pylist(samples, schema=SAMPLES), users)
    out = {"samples": samples_t, "rewards": pa.Table.from_pylist(rewards, schema=REWARDS),
           "user_state": pa.Table.from_pylist(states, schema=USER_STATE),
           "reward_history": pa.Table.from_pylist(histories, schema=REWARD_HISTORY),
           "item_stats": item_stats(d, items, day_start_ms)}
    return {k: sort(k, v) for k, v in out.items()}


def _long(uid, before: list[dict], p: Params, author, tags, vec) -> dict:
    if not before:
        return {"long_item_id": [], "long_author_id": [], "long_ts": [], "long_weight": [], "lifelong_len": 0}
    last_seen = {}
    for e in before:
        last_seen[e["item_id"]] = max(last_seen.get(e["item_id"], e["ts"]), e["ts"])
    life = [{"item_id": item, "ts": ts, "author_id": author(item), "tags": tags(item),
             "vector": vec.get(item) if vec is not None else None} for item, ts in last_seen.items()]
    out = longterm.compress(int(uid), life, p, "embed" if vec is not None else "content")
    out.pop("user_id")
    return out


def _profile(samples: pa.Table, users: pa.Table) -> pa.Table:
    cols = [f.name for f in users.schema if f.name != "user_id" and not pa.types.is_null(f.type)]
    row_of = {u: i for i, u in enumerate(users["user_id"].to_pylist())}
    idx = pa.array([row_of.get(u) for u in samples["user_id"].to_pylist()], type=pa.int64())
    picked = users.select(cols).take(idx)
    for c in cols:
        samples = samples.append_column(PROFILE_PREFIX + c, picked[c])
    return samples


def item_stats(day: pd.DataFrame, items: pa.Table, day_start_ms: int) -> pa.Table:
    d = day.copy()
    play = d["play_time_ms"]
    d["_play"] = (play > 0).fillna(False).astype("int64")
    d["_complete"] = ((d["duration_ms"] > 0) & (play >= d["duration_ms"])).fillna(False).astype("int64")
    g = d.groupby("item_id").agg(exposures=("user_id", "size"), users=("user_id", "nunique"), plays=("_play", "sum"),
                                 completions=("_complete", "sum"), play_time_ms=("play_time_ms", "sum"),
                                 clicks=("click", "sum"), likes=("like", "sum"), dislikes=("dislike", "sum"),
                                 follows=("follow", "sum"), comments=("comment", "sum"), forwards=("forward", "sum"))
    cat = items.select(["item_id", "first_seen"]).to_pandas().set_index("item_id")["first_seen"]
    ids = sorted(set(cat.index.tolist()) | set(int(i) for i in g.index))
    rows = []
    for i in ids:
        fs = cat.get(i)
        fs = None if fs is None or pd.isna(fs) else int(fs)
        r = {"item_id": i, "first_seen": fs, "is_new": None if fs is None else fs >= day_start_ms}
        if i in g.index:
            s = g.loc[i]
            r.update({k: int(s[k]) for k in ("exposures", "users", "plays", "completions", "play_time_ms", "clicks",
                                            "likes", "dislikes", "follows", "comments", "forwards")})
            r["completion_rate"] = r["completions"] / r["plays"] if r["plays"] else None
        else:
            r.update({k: 0 for k in ("exposures", "users", "plays", "completions", "play_time_ms", "clicks", "likes",
                                     "dislikes", "follows", "comments", "forwards")}, completion_rate=None)
        rows.append(r)
    return pa.Table.from_pylist(rows, schema=ITEM_STATS)


def sort(name: str, table: pa.Table) -> pa.Table:
    return table.sort_by([(k, "ascending") for k in SORT_KEYS[name]])
