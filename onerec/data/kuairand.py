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

import io
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
CLOCK_SKEW_MS = 3 * 3_600_000   # |time_ms - Beijing (date, hourmin)| allowed: the official log rounds to the hour
BEIJING_MS = 8 * 3_600_000


def load(path, *, date=None, log_files=None, variant="pure", statistics=True, user_features=None,
         video_features=None, video_statistics=None, max_clock_skew_ms=CLOCK_SKEW_MS, **_ignored) -> Dataset:
    root = require_dir(path, "kuairand")
    logs = _log_files(root, log_files, variant)
    log = pd.concat([read_log(f, max_clock_skew_ms=max_clock_skew_ms) for f in logs], ignore_index=True)

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
    _require(videos, vpath, ("video_id", "author_id", "video_duration", "tag", "upload_dt"))
    if statistics:
        spath = find_file(root, video_statistics or f"video_features_statistic_{variant}.csv", SUBDIRS,
                          "kuairand video statistics")
        files["video_statistics"] = str(spath)
        stats = _read_csv(spath, dtype={"video_id": "int64"})
        _require(stats, spath, ("video_id",))
        # The official header spells one column follow_user_num1; our derived copy says follow_user_num.
        if "follow_user_num" not in stats:
            stats = stats.rename(columns={"follow_user_num1": "follow_user_num"})
        videos = videos.merge(stats.add_prefix("stat_").rename(columns={"stat_video_id": "video_id"}),
                              on="video_id", how="left")
    items = _items(videos, imp)

    users = _read_csv(upath, dtype={"user_id": "int64"})
    _require(users, upath, ("user_id",))
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


def read_log(path: Path, *, max_clock_skew_ms: int = CLOCK_SKEW_MS) -> pd.DataFrame:
    """One log CSV, checked: every problem is one SchemaError line naming the file, the column and a line.

    Beyond types and nulls, `date` (YYYYMMDD, Beijing) and `hourmin` (HHMM, the official log rounds it to the
    hour) must agree with `time_ms` within `max_clock_skew_ms`: a row stamped in the year 2100, or a date such
    as 20221345, would otherwise land in a partition no run ever ingests and vanish without a word.
    """
    path = Path(path)
    raw = path.read_bytes()
    if not raw.strip():
        raise SchemaError(f"{path}: empty file (no header, no rows)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SchemaError(f"{path}: not UTF-8 text (byte {e.start}: {raw[e.start:e.start + 4]!r}); "
                          f"binary, compressed or another encoding?") from None
    header = text.split("\n", 1)[0].rstrip("\r").lstrip("\ufeff")
    names = header.split(",")
    need = list(LOG_DTYPES) + [c for c in ("date", "hourmin") if c in names]
    missing = [c for c in LOG_DTYPES if c not in names]
    if missing:
        sep = next((d for d in (";", "\t", "|") if d in header), None)
        if sep and len(names) == 1:
            raise SchemaError(f"{path}: the header is not comma-separated (it uses {sep!r})")
        raise SchemaError(f"{path}: missing column(s) {missing}")
    lines = text.rstrip("\n").split("\n")
    if len(lines) < 2:
        raise SchemaError(f"{path}: a header but no rows")
    if not text.endswith("\n") and lines[-1].count(",") < len(names) - 1:
        raise SchemaError(f"{path}: truncated: the last line (line {len(lines)}) has {lines[-1].count(',') + 1} "
                          f"of {len(names)} fields")
    try:
        df = pd.read_csv(io.StringIO(text), usecols=need, dtype={c: "int64" for c in need})
    except (ValueError, OverflowError) as e:    # the fast typed read failed: find the first bad value
        _diagnose(path, text, need)
        raise SchemaError(f"{path}: {str(e).splitlines()[0]}") from None
    for col in ("is_rand", *FLAGS):
        bad = ~df[col].isin([0, 1])
        if bad.any():
            i = int(bad.to_numpy().argmax())
            raise SchemaError(f"{path}: column {col}: {int(bad.sum())} value(s) not 0/1, first {df[col].iloc[i]} "
                              f"at line {i + 2}")
    if "date" in df:
        _check_clock(path, df, max_clock_skew_ms)
    return df.drop(columns=[c for c in ("date", "hourmin") if c in df]).astype(LOG_DTYPES)


def _diagnose(path: Path, text: str, need: list[str]) -> None:
    """Raise a SchemaError naming the first empty, repeated-header or non-integer value (slow: strings)."""
    df = pd.read_csv(io.StringIO(text), usecols=need, dtype=str, keep_default_na=False)
    for col in need:
        values = df[col].str.strip()
        empty = values == ""
        if empty.any():
            i = int(empty.to_numpy().argmax())
            raise SchemaError(f"{path}: column {col}: {int(empty.sum())} empty value(s), first at line {i + 2}")
        bad = ~values.str.fullmatch(r"-?\d+")
        if bad.any():
            i = int(bad.to_numpy().argmax())
            if values.iloc[i] == col:
                raise SchemaError(f"{path}: line {i + 2} repeats the header (concatenated files?)")
            raise SchemaError(f"{path}: column {col}: {int(bad.sum())} non-integer value(s), first {values.iloc[i]!r} "
                              f"at line {i + 2}")


def _check_clock(path: Path, df: pd.DataFrame, skew_ms: int) -> None:
    hourmin = df["hourmin"] if "hourmin" in df else pd.Series(0, index=df.index)
    stamp = df["date"].astype(str) + hourmin.astype(str).str.zfill(4)
    slot = pd.to_datetime(stamp, format="%Y%m%d%H%M", errors="coerce")
    invalid = slot.isna()
    if invalid.any():
        i = int(invalid.to_numpy().argmax())
        raise SchemaError(f"{path}: {int(invalid.sum())} row(s) with an impossible date/hourmin, first "
                          f"date={df['date'].iloc[i]} hourmin={hourmin.iloc[i]} at line {i + 2}")
    slot_ms = (slot - pd.Timestamp(0)) // pd.Timedelta(milliseconds=1) - BEIJING_MS
    off = (df["time_ms"] - slot_ms).abs() > skew_ms
    if off.any():
        i = int(off.to_numpy().argmax())
        when = pd.Timestamp(int(df["time_ms"].iloc[i]), unit="ms", tz="UTC").isoformat()
        raise SchemaError(f"{path}: {int(off.sum())} row(s) whose time_ms disagrees with date/hourmin by more than "
                          f"{skew_ms / 3_600_000:g} h, first at line {i + 2}: time_ms={df['time_ms'].iloc[i]} ({when}) "
                          f"vs date={df['date'].iloc[i]} hourmin={hourmin.iloc[i]} (Beijing)")


def _require(df: pd.DataFrame, path: Path, columns) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise SchemaError(f"{path}: missing column(s) {missing}")
    if df[columns[0]].duplicated().any():
        dup = df[columns[0]][df[columns[0]].duplicated()]
        raise SchemaError(f"{path}: {len(dup)} repeated {columns[0]}(s), first {dup.iloc[0]}")


def _read_csv(path: Path, **kw) -> pd.DataFrame:
    try:
        return pd.read_csv(path, **kw)
    except (ValueError, KeyError) as e:   # wrong columns, non-integer ids, not UTF-8 (UnicodeDecodeError), empty
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
