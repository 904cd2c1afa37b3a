"""Adapters from public formats (and the synthetic generator) into the data contract.

Each adapter is a function `load(path: str | None, *, date: str | None = None, **options) -> Dataset`
returning tables in the canonical schemas of `onerec.schemas`. File adapters return the whole history
and ignore `date`; day-wise sources (the synthetic generator, landed parquet logs) return only that
day's impressions. The `ingest` stage always cuts day `date` out of what it gets.
The `parquet` source is the production path: it reads landed logs AS THEY ARE (no casting), so the
`validate` stage, not the adapter, is what rejects a bad day.
Adapters are looked up by name so configs can say `data: {source: kuairand, path: ...}`.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field

import pandas as pd

from onerec.schemas import SchemaError


@dataclass
class Dataset:
    impressions: pd.DataFrame  # canonical IMPRESSIONS columns, sorted by ts
    items: pd.DataFrame        # canonical ITEMS columns (+ extra feature columns)
    users: pd.DataFrame        # canonical USERS columns (+ static feature columns)
    info: dict = field(default_factory=dict)  # provenance: files read, timestamp scheme, counts


# name -> "module:function"; kept as strings so importing this module stays cheap.
ADAPTERS = {
    "synthetic": "onerec.data.synthetic:load",
    "kuairand": "onerec.data.kuairand:load",
    "amazon_s3rec": "onerec.data.amazon:load_s3rec",
    "amazon_letter": "onerec.data.amazon:load_letter",
    "movielens_recbole": "onerec.data.movielens:load_recbole",
    "movielens_dat": "onerec.data.movielens:load_dat",
    "parquet": "onerec.data.landed:load",
}


class UnknownSource(SchemaError):
    pass


def load_dataset(source: str, path: str | None = None, **options) -> Dataset:
    if source not in ADAPTERS:
        raise UnknownSource(f"unknown data source {source!r}; known: {', '.join(sorted(ADAPTERS))}")
    module, fn = ADAPTERS[source].split(":")
    return getattr(importlib.import_module(module), fn)(path, **options)
