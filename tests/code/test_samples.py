"""samples._padded: list columns -> fixed-width arrays, read straight from the arrow buffers, against a
per-row Python reference (nulls, sliced arrays, chunks, null lists backed by non-empty segments)."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from onerec.samples import _padded


def reference(lists: list, length: int, fill, keep_last: bool):
    out = np.full((len(lists), length), fill, dtype=object)
    mask = np.zeros((len(lists), length), dtype=bool)
    for b, values in enumerate(lists):
        values = values or []
        take = min(len(values), length)
        kept = values[len(values) - take:] if keep_last else values[:take]
        out[b, :take], mask[b, :take] = kept, True
    return out, mask


@pytest.mark.parametrize("typ", [pa.list_(pa.int64()), pa.list_(pa.int32()), pa.large_list(pa.int64()),
                                 pa.list_(pa.float64())])
def test_padded_matches_per_row_reference(typ):
    rng = np.random.default_rng(0)
    for trial in range(60):
        lists = [None if rng.random() < 0.2 else rng.integers(0, 100, int(rng.integers(0, 12))).tolist()
                 for _ in range(int(rng.integers(0, 8)))]
        arr = pa.array(lists, typ)
        n = len(lists)
        for lo, hi in ((0, n), (min(1, n), n), (min(2, n), min(5, n))):
            part = arr.slice(lo, hi - lo)
            for length in (0, 1, 5, 20):
                for keep_last in (True, False):
                    for col in (part, pa.chunked_array([part], typ)):
                        out, mask = _padded(col, length, fill=-1, keep_last=keep_last)
                        want, want_mask = reference(lists[lo:hi], length, -1, keep_last)
                        np.testing.assert_array_equal(mask, want_mask)
                        np.testing.assert_array_equal(out, want.astype(out.dtype))
                        has_values = any(lists[lo:hi][b] for b in range(hi - lo))
                        assert out.dtype == (typ.value_type.to_pandas_dtype() if has_values else np.int64)


def test_null_list_backed_by_values_holds_nothing():
    """Arrow lets a null list's offsets span child values; they are not entries of that row."""
    arr = pa.ListArray.from_arrays(pa.array([0, 2, 4, 5], pa.int32()), pa.array([1, 2, 3, 4, 5], pa.int64()),
                                   mask=pa.array([False, True, False]))
    out, mask = _padded(arr, 3)
    np.testing.assert_array_equal(out, [[1, 2, 0], [0, 0, 0], [5, 0, 0]])
    np.testing.assert_array_equal(mask, [[True, True, False], [False] * 3, [True, False, False]])
    out, mask = _padded(arr.slice(1), 1)
    np.testing.assert_array_equal(out, [[0], [5]])
