"""KuaiRand (Kuaishou short-video logs, Gao et al. CIKM'22) -> the data contract.

Layouts accepted under `path` (first match wins):
  official archive   KuaiRand-Pure/data/log_*_pure.csv + side tables (also `path/data/...` or flat `path/...`)
  our bundle         derived/log_standard_4_25_to_5_08_pure.csv, derived/video_features_statistic_pure.csv,
                     raw/user_features_pure.csv, raw/video_features_basic_pure.csv
Options: `log_files=[...]` (paths, relative to `path` or absolute) overrides the log glob; `variant="pure"`
selects the file suffix (KuaiRand-1K ships `*_1k.csv`); `statistics=False` skips the statistic table;
`user_features` / `video_features` / `video_statistics` override side-table file names.

Mapping decisions:
* request_id = f"{user_id}-{time_ms}": KuaiRand records no request id; one user's events at the same
  millisecond are the closest thing to one request.
* source = "random" for is_rand=1 (KuaiRand's randomly exposed videos), else "legacy"; gen_prob null.
* Dates: KuaiRand's `date`/`hourmin` columns are Beijing time (UTC+8), but canonical partitions are UTC
  days of `ts`, so the first Beijing morning falls on the previous UTC date. The bundled 14 Beijing days
  2022-04-25..05-08 span 15 UTC dates 2022-04-24..05-08 (`info["utc_dates"]`).
* items.first_seen = min(upload_dt at 00:00 UTC, first impression ts); with no upload_dt, the first
  impression; with neither, the log start, i.e. the first impression of anyone (see `_frames.first_seen`).
* Item extras: the statistic columns prefixed `stat_`, plus video_type, upload_dt, upload_type,
  visible_status, server_width/height, music_id, music_type. User extras: every user_features column.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from onerec.data import Dataset
from onerec.data._frames import add_missing, canonical, find_file, first_seen, require_dir, sort_impressions
from onerec.schemas import SchemaError, date_of

SUBDIRS = ("", "data", "KuaiRand-Pure/data", "KuaiRand-1K/data", "derived", "raw")
FLAGS = {"is_click": "click", "is_like": "like", "is_follow": "follow", "is_comment": "comment",
         "is_forward": "forward", "is_hate": "dislike"}
LOG_DTYPES = {"user_id": "int64", "video_id": "int64", "time_ms": "int64", "play_time_ms": "int64",
              "duration_ms": "int64", "is_rand": "int8", **{c: "int8" for c in FLAGS}}


def load(path, *, date=None, log_files=None, variant="pure", statistics=True, user_features=None,
         video_features=None, video_statistics=None, **_ignored) -> Dataset:
    root = require_dir(path, "kuairand")
    logs = _log_files(root, log_files, variant)
    log = pd.concat([_read_csv(f, usecols=list(LOG_DTYPES), dtype=LOG_DTYPES) for f in logs], ignore_index=True)

    imp = pd.DataFrame({
        "user_id": log["user_id"],
        "item_id": log["video_id"],
        "ts": log["time_ms"],
        "request_id": log["user_id"].astype(str) + "-" + log["time_ms"].astype(str),
        "play_time_ms": log["play_time_ms"],
        "duration_ms": log["duration_ms"],
        **{new: log[old] for old, new in FLAGS.items()},
        "source": log["is_rand"].map({1: "random"}).fillna("legacy"),
        "gen_prob": float("nan"),
    })
    imp = sort_impressions(imp)

    files = {"logs": [str(f) for f in logs]}
    vpath = find_file(root, video_features or f"video_features_basic_{variant}.csv", SUBDIRS, "kuairand video features")
    upath = find_file(root, user_features or f"user_features_{variant}.csv", SUBDIRS, "kuairand user features")
    files.update(video_features=str(vpath), user_features=str(upath))
    videos = _read_csv(vpath, dtype={"video_id": "int64", "author_id": "Int64", "tag": "string", "upload_dt": "string"})
    if statistics:
        spath = find_file(root, video_statistics or f"video_features_statistic_{variant}.csv", SUBDIRS,
                          "kuairand video statistics")
        files["video_statistics"] = str(spath)
        stats = _read_csv(spath, dtype={"video_id": "int64"})
        # The official header spells one column follow_user_num1; our derived copy says follow_user_num.
        if "follow_user_num" not in stats:
            stats = stats.rename(columns={"follow_user_num1": "follow_user_num"})
        videos = videos.merge(stats.add_prefix("stat_").rename(columns={"stat_video_id": "video_id"}),
                              on="video_id", how="left")
    items = _items(videos, imp)

    users = _read_csv(upath, dtype={"user_id": "int64"})
    users = add_missing(users, "user_id", imp["user_id"]).sort_values("user_id")   # log users lacking features

    dates = date_of(imp["ts"]).unique()
    info = {
        "adapter": "kuairand", "files": files,
        "timestamps": "time_ms as logged (UTC ms); partitions are UTC dates, KuaiRand's date column is Beijing time",
        "request_id": "f'{user_id}-{time_ms}' (KuaiRand has no request id)",
        "first_seen": "min(upload_dt 00:00 UTC, first impression); else first impression; else the log start",
        "counts": {"impressions": len(imp), "users_in_log": int(imp["user_id"].nunique()),
                   "items_in_log": int(imp["item_id"].nunique()), "items": len(items), "users": len(users)},
        "utc_dates": [str(dates.min()), str(dates.max())], "n_utc_dates": len(dates),
    }
    return Dataset(canonical(imp, "impressions"), canonical(items, "items"),
                   canonical(users.reset_index(drop=True), "users"), info)


def _log_files(root: Path, log_files, variant: str) -> list[Path]:
    if log_files:
        paths = [Path(f) if Path(f).is_absolute() else root / f for f in log_files]
        for p in paths:
            if not p.is_file():
                find_file(p.parent, p.name, what="kuairand log")   # raises MissingFile naming it
        return paths
    for sub in SUBDIRS:   # the first folder holding logs wins, so two layouts never double-count
        found = sorted((root / sub).glob(f"log_*_{variant}.csv"))
        if found:
            return found
    return [find_file(root, f"log_*_{variant}.csv", SUBDIRS, "kuairand log")]   # raises


def _read_csv(path: Path, **kw) -> pd.DataFrame:
    try:
        return pd.read_csv(path, **kw)
    except (ValueError, KeyError) as e:   # wrong columns or non-integer values in an id/flag column
        raise SchemaError(f"{path}: {str(e).splitlines()[0]}") from None


def _items(videos: pd.DataFrame, imp: pd.DataFrame) -> pd.DataFrame:
    # Videos shown in the log but absent from the side table still need a catalogue row.
    v = add_missing(videos, "video_id", imp["item_id"]).sort_values("video_id").reset_index(drop=True)
    upload = pd.to_datetime(v["upload_dt"], format="%Y-%m-%d", errors="coerce", utc=True)
    upload_ms = ((upload - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(milliseconds=1)).set_axis(v["video_id"])
    tags = v["tag"].map(lambda s: [t.strip() for t in s.split(",") if t.strip()] if isinstance(s, str) else [])
    items = pd.DataFrame({
        "item_id": v["video_id"],
        "first_seen": first_seen(v["video_id"], imp, known=upload_ms),
        "duration_ms": v["video_duration"].round().astype("Int64"),
        "author_id": v["author_id"],
        "tags": tags,
        "text": None,
        "image_vector": None,
    })
    extras = v.drop(columns=["video_id", "author_id", "video_duration", "tag"])
    return pd.concat([items, extras], axis=1)
