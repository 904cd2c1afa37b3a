"""The data contract: canonical pyarrow schemas for impressions, items and users.

Every adapter (public datasets, the synthetic generator, a production log) produces exactly these
columns; the `validate` stage guards them. Extra columns are allowed on items and users (they carry
dataset-specific features, e.g. KuaiRand's 51 statistics); impressions are closed.
Dates are UTC calendar days: an impression belongs to the partition of `ts` (ms since epoch).
"""
from __future__ import annotations

import datetime as dt

import pandas as pd
import pyarrow as pa

from onerec.errors import BadInput

SOURCES = ("model", "legacy", "random")  # who chose the exposure; only "model" rows carry gen_prob

IMPRESSIONS = pa.schema([
    pa.field("user_id", pa.int64(), nullable=False),
    pa.field("item_id", pa.int64(), nullable=False),
    pa.field("ts", pa.int64(), nullable=False),            # ms since epoch, UTC
    pa.field("request_id", pa.string(), nullable=False),    # one request may expose several items
    pa.field("play_time_ms", pa.int64()),                   # null where the dataset has no watch time
    pa.field("duration_ms", pa.int64()),                    # item duration at exposure; null if unknown
    pa.field("click", pa.int8(), nullable=False),
    pa.field("like", pa.int8(), nullable=False),
    pa.field("follow", pa.int8(), nullable=False),
    pa.field("comment", pa.int8(), nullable=False),
    pa.field("forward", pa.int8(), nullable=False),
    pa.field("dislike", pa.int8(), nullable=False),
    pa.field("source", pa.string(), nullable=False),        # one of SOURCES
    pa.field("gen_prob", pa.float64()),                     # generation probability when our model served it
])

ITEMS = pa.schema([
    pa.field("item_id", pa.int64(), nullable=False),
    pa.field("first_seen", pa.int64(), nullable=False),     # ms since epoch
    pa.field("duration_ms", pa.int64()),
    pa.field("author_id", pa.int64()),
    pa.field("tags", pa.list_(pa.string())),
    pa.field("text", pa.string()),
    pa.field("image_vector", pa.list_(pa.float32())),
])

USERS = pa.schema([
    pa.field("user_id", pa.int64(), nullable=False),
])

TABLES = {"impressions": IMPRESSIONS, "items": ITEMS, "users": USERS}
OPEN_TABLES = {"items", "users"}  # may carry extra feature columns
EVENT_KEY = ("user_id", "item_id", "ts", "request_id")  # one impression; must be unique within a day
FLAGS = ("click", "like", "follow", "comment", "forward", "dislike")

DAY_MS = 86_400_000


class SchemaError(BadInput):
    """A table does not follow the data contract (bad data: exit code 2)."""


def date_of(ts_ms) -> pd.Series:
    """UTC calendar date (YYYY-MM-DD strings) of millisecond timestamps."""
    return pd.to_datetime(pd.Series(ts_ms), unit="ms", utc=True).dt.strftime("%Y-%m-%d")


def day_start_ms(date: str) -> int:
    d = dt.datetime.strptime(date, "%Y-%m-%d").replace(tzinfo=dt.timezone.utc)
    return int(d.timestamp() * 1000)


def conform(df: pd.DataFrame, table: str) -> pa.Table:
    """Cast a DataFrame to the canonical schema of `table` (columns in contract order, extras after).

    Raises SchemaError naming the missing or uncastable column; adapters call this so that a bad
    mapping fails at the adapter, not three stages later.
    """
    schema = TABLES[table]
    missing = [f.name for f in schema if f.name not in df.columns]
    if missing:
        raise SchemaError(f"{table}: missing column(s) {missing}")
    extras = [c for c in df.columns if c not in schema.names] if table in OPEN_TABLES else []
    if table not in OPEN_TABLES:
        unknown = [c for c in df.columns if c not in schema.names]
        if unknown:
            raise SchemaError(f"{table}: unknown column(s) {unknown}")
    arrays, fields = [], []
    for f in schema:
        col = df[f.name]
        if not f.nullable and col.isna().any():
            raise SchemaError(f"{table}.{f.name}: {int(col.isna().sum())} null value(s) in a non-null column")
        try:
            arrays.append(pa.array(col, type=f.type, from_pandas=True))
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as e:
            raise SchemaError(f"{table}.{f.name}: cannot cast to {f.type}: {e}") from None
        fields.append(f)
    for c in extras:
        arr = pa.array(df[c], from_pandas=True)
        arrays.append(arr)
        fields.append(pa.field(c, arr.type))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def schema_problems(table: pa.Table, name: str) -> list[str]:
    """Human-readable differences between a table's schema and the contract (empty when it conforms)."""
    problems = []
    for f in TABLES[name]:
        if f.name not in table.schema.names:
            problems.append(f"missing column {f.name!r}")
            continue
        got = table.schema.field(f.name).type
        if got != f.type:
            problems.append(f"column {f.name!r} has type {got}, expected {f.type}")
    if name not in OPEN_TABLES:
        extra = [c for c in table.schema.names if c not in TABLES[name].names]
        if extra:
            problems.append(f"unexpected column(s) {extra}")
    return problems
