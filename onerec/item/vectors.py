"""Vectors <-> Arrow `list<float32>` columns (with the checks that turn bad inputs into one clear line),
and the metadata of safetensors blobs."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from onerec.errors import BadInput


def to_arrow(matrix: np.ndarray) -> pa.Array:
    """(n, d) float matrix -> list<float32> array (what `vectors.parquet` stores)."""
    m = np.ascontiguousarray(matrix, dtype=np.float32)
    n, d = m.shape
    return pa.ListArray.from_arrays(pa.array(np.arange(0, n * d + 1, d, dtype=np.int32)), pa.array(m.ravel()))


def from_arrow(column, what: str) -> np.ndarray:
    """list<float> column -> (n, d) float32; BadInput on nulls, ragged rows, NaN/inf or no rows."""
    col = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if len(col) == 0:
        raise BadInput(f"{what}: no vectors")
    if not (pa.types.is_list(col.type) or pa.types.is_large_list(col.type) or pa.types.is_fixed_size_list(col.type)):
        raise BadInput(f"{what}: expected a list<float> column, got {col.type}")
    if col.null_count:
        raise BadInput(f"{what}: {col.null_count} null vector(s)")
    lengths = np.asarray(pc.list_value_length(col))
    if lengths.min() != lengths.max() or lengths[0] == 0:
        raise BadInput(f"{what}: vectors of different lengths ({lengths.min()}..{lengths.max()})")
    flat = col.flatten()
    if flat.null_count:
        raise BadInput(f"{what}: null values inside vectors")
    m = np.asarray(flat.to_numpy(zero_copy_only=False), dtype=np.float32).reshape(len(col), int(lengths[0]))
    if not np.isfinite(m).all():
        raise BadInput(f"{what}: {int((~np.isfinite(m).any(1)).sum())} vector(s) with NaN or inf")
    return m


def safetensors_metadata(data: bytes) -> dict:
    """The `__metadata__` of a safetensors blob (format: 8-byte little-endian header length, JSON header)."""
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8:8 + n]).get("__metadata__", {}) or {}


def safetensors_has_tensors(data: bytes) -> bool:
    n = int.from_bytes(data[:8], "little")
    return any(k != "__metadata__" for k in json.loads(data[8:8 + n]))
