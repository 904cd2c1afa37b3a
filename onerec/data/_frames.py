"""Small helpers shared by the file adapters (kuairand, amazon, movielens): locating input files
and returning DataFrames that have provably passed `conform`."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa

from onerec.schemas import SchemaError, conform


class MissingFile(SchemaError, FileNotFoundError):
    """An adapter input file is absent. Both a SchemaError (the CLI maps it to exit 2, 'bad data')
    and a FileNotFoundError (what callers naturally catch)."""


def find_file(root, names, subdirs=("",), what="input") -> Path:
    """First existing `root/<subdir>/<name>`; raise MissingFile naming the expected file otherwise.

    Datasets arrive in several layouts (official archive, our bundle's raw/ + derived/ folders), so
    adapters accept a folder and look in a few known subfolders rather than demanding one layout.
    """
    root = Path(root)
    names = [names] if isinstance(names, str) else list(names)
    for sub in subdirs:
        for name in names:
            p = root / sub / name
            if p.is_file():
                return p
    where = ", ".join(sorted({str(root / s) for s in subdirs}))
    raise MissingFile(f"{what} file not found: {names[0]} (looked in {where})")


def require_dir(path, what: str) -> Path:
    if path is None:
        raise MissingFile(f"{what}: no data path given")
    p = Path(path)
    if not p.is_dir():
        raise MissingFile(f"{what}: data folder not found: {p}")
    return p


def canonical(df: pd.DataFrame, table: str) -> pd.DataFrame:
    """`df` cast through `conform` and back, so a bad mapping fails here, in the adapter.

    int64 columns come back as plain int64 when complete and as nullable Int64 when they hold nulls
    (plain pandas would turn them into float64 and lose ids/durations above 2**53); list columns come
    back as numpy arrays. The result round-trips through `conform` unchanged.
    """
    out = conform(df, table).to_pandas(types_mapper=lambda t: pd.Int64Dtype() if pa.types.is_int64(t) else None)
    for c in out.columns:
        if isinstance(out[c].dtype, pd.Int64Dtype) and not out[c].hasnans:
            out[c] = out[c].astype("int64")
    return out


def first_seen(items: pd.Series, impressions: pd.DataFrame, known: pd.Series | None = None) -> pd.Series:
    """first_seen (ms) for the item ids in `items`: the earliest evidence the item existed.

    Evidence is its first impression and, where the dataset has one, a `known` publication time
    (index item_id). An item with no evidence at all (in the catalogue, never shown, no upload
    time) is taken to exist from the first impression of the log: it was a candidate all along, and
    the log start (unlike the oldest upload of some other item) is a time the data actually covers.
    """
    evidence = impressions.groupby("item_id")["ts"].min()
    if known is not None:
        evidence = pd.concat([evidence, known.dropna().astype("int64")]).groupby(level=0).min()
    fallback = int(impressions["ts"].min()) if len(impressions) else int(evidence.min()) if len(evidence) else 0
    return items.map(evidence).fillna(fallback).astype("int64")


def add_missing(table: pd.DataFrame, key: str, ids: pd.Series) -> pd.DataFrame:
    """`table` plus id-only rows for the `ids` it lacks (e.g. log users absent from a side table).
    Concatenates only when there are some: even an empty frame would upcast every int column."""
    missing = pd.Index(ids.unique()).difference(table[key])
    return table if missing.empty else pd.concat([table, pd.DataFrame({key: missing})], ignore_index=True)


def sort_impressions(df: pd.DataFrame) -> pd.DataFrame:
    return df.sort_values(["ts", "user_id", "item_id"], kind="stable").reset_index(drop=True)
