"""Amazon review benchmarks in the two formats generative-retrieval papers ship -> the data contract.

Both formats are ORDER ONLY (each user's items are chronological, no times), so timestamps are
synthetic: see `onerec.data.timestamps` (options `start_date`, `n_days`). Every interaction is a
review, i.e. a positive engagement: click=1, every other flag 0, play/duration null, source "legacy".
request_id = f"{user_id}-{position}" (0-based position in the user's sequence).
items.first_seen = the item's first (synthetic) interaction; never-reviewed items: the log start
(the first impression of anyone).

S3-Rec (`load_s3rec`, CIKM'20; also used by P5/TIGER): `<name>.txt` lines "user item1 item2 ...",
1-based ids kept as they are; `<name>_item2attributes.json` {"item": [attribute ids]} -> tags (ids as
strings). When the dataset folder has `derived/<name lower>_item_attributes.tsv` (item_id_p5 == S3-Rec
item id, asin, attributes = " | "-joined names) its names become `text` and `asin` an extra column.

LETTER / LC-Rec (`load_letter`): `<name>.inter.json` {"user": [item, ...]} 0-based ids kept as they
are; optional `<name>.item.json` {"item": {title, description, brand, categories}}:
    text = "title. brand. categories. description"  (each part stripped of surrounding blanks and
           trailing periods, empty parts skipped, categories joined ", "; null when all are empty)
    tags = categories split on ','; `title` and `brand` kept as extra columns.
Without an item file the items carry only ids (text null, tags empty).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from onerec.data import Dataset
from onerec.data._frames import MissingFile, canonical, find_file, first_seen, require_dir, sort_impressions
from onerec.data.timestamps import SCHEME, order_to_ts
from onerec.schemas import SchemaError, date_of

S3REC_DIRS = ("", "s3rec", "data")
LETTER_DIRS = ("", "letter_format", "data")


def load_s3rec(path, *, date=None, name="Beauty", start_date="2024-01-01", n_days=30,
               sequences_file=None, attributes_file=None, names_file=None, **_ignored) -> Dataset:
    root = require_dir(path, "amazon_s3rec")
    seq_path = find_file(root, sequences_file or f"{name}.txt", S3REC_DIRS, "amazon_s3rec sequences")
    sequences = {}
    with open(seq_path) as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                try:
                    user, *seq = map(int, line.split())
                except ValueError:
                    raise SchemaError(f"{seq_path}:{lineno}: expected 'user item1 item2 ...' integers") from None
                sequences[user] = seq
    files = {"sequences": str(seq_path)}

    attributes = {}
    attr_path = _optional(root, attributes_file or f"{name}_item2attributes.json", S3REC_DIRS)
    if attr_path:
        attributes = {int(k): v for k, v in _read_json(attr_path).items()}
        files["attributes"] = str(attr_path)
    # Attribute names live in our bundle's derived/ folder, next to s3rec/ (path may be either).
    names = None
    names_path = _optional(root, names_file or f"{name.lower()}_item_attributes.tsv", ("derived", "../derived"))
    if names_path:
        t = pd.read_csv(names_path, sep="\t", dtype={"item_id_p5": "int64", "asin": "string", "attributes": "string"})
        names = t.rename(columns={"item_id_p5": "item_id", "attributes": "text"})[["item_id", "asin", "text"]]
        files["attribute_names"] = str(names_path)

    imp = _impressions(sequences, start_date, n_days)
    ids = set(imp["item_id"].unique()) | set(attributes) | (set(names["item_id"]) if names is not None else set())
    items = pd.DataFrame({"item_id": np.array(sorted(ids), dtype="int64")})
    items["tags"] = items["item_id"].map(lambda i: [str(a) for a in attributes.get(i, [])])
    if names is not None:
        items = items.merge(names, on="item_id", how="left")
    return _dataset("amazon_s3rec", imp, items, files, start_date, n_days)


def load_letter(path, *, date=None, name=None, start_date="2024-01-01", n_days=30, **_ignored) -> Dataset:
    root = require_dir(path, "amazon_letter")
    if name is None:   # autodetect: exactly one <name>.inter.json
        found = sorted({p for sub in LETTER_DIRS for p in (root / sub).glob("*.inter.json")})
        if len(found) != 1:
            what = "no *.inter.json" if not found else f"several *.inter.json ({', '.join(p.name for p in found)})"
            raise MissingFile(f"amazon_letter: {what} in {root}; pass option name=")
        inter_path = found[0]
        name = inter_path.name[: -len(".inter.json")]
    else:
        inter_path = find_file(root, f"{name}.inter.json", LETTER_DIRS, "amazon_letter interactions")
    sequences = {int(u): [int(i) for i in seq] for u, seq in _read_json(inter_path).items()}
    files = {"interactions": str(inter_path)}

    meta = {}
    item_path = inter_path.with_name(f"{name}.item.json")
    if item_path.is_file():
        meta = {int(k): v for k, v in _read_json(item_path).items()}
        files["items"] = str(item_path)

    imp = _impressions(sequences, start_date, n_days)
    ids = sorted(set(imp["item_id"].unique()) | set(meta))
    items = pd.DataFrame({"item_id": np.array(ids, dtype="int64")})
    m = items["item_id"].map(lambda i: meta.get(i, {}))
    items["tags"] = m.map(lambda d: [c.strip() for c in (d.get("categories") or "").split(",") if c.strip()])
    items["text"] = [_letter_text(d, tags) for d, tags in zip(m, items["tags"])]
    if meta:
        items["title"] = m.map(lambda d: d.get("title"))
        items["brand"] = m.map(lambda d: d.get("brand"))
    return _dataset("amazon_letter", imp, items, files, start_date, n_days)


def _letter_text(d: dict, tags: list) -> str | None:
    parts = [d.get("title"), d.get("brand"), ", ".join(tags), d.get("description")]
    parts = [str(p).strip().rstrip(".").strip() for p in parts if p]
    return ". ".join(p for p in parts if p) or None


def _impressions(sequences: dict, start_date: str, n_days: int) -> pd.DataFrame:
    users = np.fromiter(sequences, dtype="int64")
    lengths = np.fromiter((len(s) for s in sequences.values()), dtype="int64")
    user = np.repeat(users, lengths)
    pos = np.arange(len(user)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    n = len(user)
    imp = pd.DataFrame({
        "user_id": user,
        "item_id": np.fromiter((i for s in sequences.values() for i in s), dtype="int64", count=n),
        "ts": order_to_ts(lengths, start_date=start_date, n_days=n_days),
        "request_id": pd.Series(user).astype(str) + "-" + pd.Series(pos).astype(str),
        "play_time_ms": None, "duration_ms": None,
        "click": np.ones(n, dtype="int8"),
        **{f: np.zeros(n, dtype="int8") for f in ("like", "follow", "comment", "forward", "dislike")},
        "source": "legacy", "gen_prob": float("nan"),
    })
    return sort_impressions(imp)


def _dataset(adapter, imp, items, files, start_date, n_days) -> Dataset:
    items.insert(1, "first_seen", first_seen(items["item_id"], imp))
    for col in ("duration_ms", "author_id", "image_vector"):
        items[col] = None
    if "text" not in items:
        items["text"] = None
    users = pd.DataFrame({"user_id": np.sort(imp["user_id"].unique())})
    dates = date_of(imp["ts"]).unique() if len(imp) else np.array([], dtype=object)
    info = {
        "adapter": adapter, "files": files,
        "timestamps": f"synthetic ({SCHEME}); start_date={start_date}, n_days={n_days}",
        "request_id": "f'{user_id}-{position}'",
        "first_seen": "first synthetic interaction; never-reviewed items: log start",
        "counts": {"impressions": len(imp), "users": len(users), "items": len(items),
                   "items_in_log": int(imp["item_id"].nunique())},
        "n_utc_dates": len(dates),
    }
    return Dataset(canonical(imp, "impressions"), canonical(items, "items"), canonical(users, "users"), info)


def _optional(root: Path, name: str, subdirs) -> Path | None:
    try:
        return find_file(root, name, subdirs)
    except MissingFile:
        return None


def _read_json(path: Path):
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise SchemaError(f"{path}: not valid JSON ({e})") from None
