"""Landed production logs in the contract's parquet layout, read AS THEY ARE.

    <path>/impressions/date=YYYY-MM-DD/*.parquet
    <path>/items.parquet   (catalog snapshot; or <path>/items/date=YYYY-MM-DD/*.parquet)
    <path>/users.parquet   (or <path>/users/date=YYYY-MM-DD/*.parquet)

Nothing is cast or repaired here: the `validate` stage is the gate that rejects a bad day, with the
reason, rather than an adapter silently coercing it.
"""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from onerec.data import Dataset
from onerec.errors import BadInput
from onerec.schemas import IMPRESSIONS


def _read(path: Path, name: str, date: str, required: bool) -> pa.Table:
    for candidate in (path / name / f"date={date}", path / f"{name}.parquet", path / name):
        if candidate.is_file() or (candidate.is_dir() and any(candidate.glob("*.parquet"))):
            files = [candidate] if candidate.is_file() else sorted(candidate.glob("*.parquet"))
            parts = [_read_file(f, name) for f in files]
            try:
                return pa.concat_tables(parts, promote_options="permissive")
            except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
                raise BadInput(f"{name} {candidate}: part files disagree on the schema: "
                               f"{str(e).splitlines()[0][:200]}") from None
    if required:
        raise BadInput(f"no {name} for {date} under {path} (expected {path / name}/date={date}/*.parquet)")
    return None


def _read_file(f: Path, name: str) -> pa.Table:
    """A landed file that is not readable parquet (truncated upload, a CSV named .parquet) is bad data."""
    try:
        return pq.read_table(f, partitioning=None)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as e:
        raise BadInput(f"{name}: {f} is not a readable parquet file: {str(e).splitlines()[0][:200]}") from None


def load(path=None, *, date: str | None = None, **options) -> Dataset:
    if not path or not Path(path).is_dir():
        raise BadInput(f"parquet source: {path!r} is not a directory")
    if date is None:
        raise BadInput("the parquet source is read day by day: give a date")
    p = Path(path)
    imps = _read(p, "impressions", date, required=False)
    if imps is None:  # an absent partition is an empty day: let validate say so
        imps = IMPRESSIONS.empty_table()
    return Dataset(imps, _read(p, "items", date, True), _read(p, "users", date, True),
                   info={"source": "parquet", "path": str(p), "sliced": True})
