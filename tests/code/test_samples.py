"""samples._padded: list columns -> fixed-width arrays, read straight from the arrow buffers, against a
per-row Python reference (nulls, sliced arrays, chunks, null lists backed by non-empty segments)."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

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


def _assert_same_batch(a, b):
    torch.testing.assert_close(a.user, b.user, rtol=0, atol=0)
    torch.testing.assert_close(a.target, b.target, rtol=0, atol=0)
    assert a.paths.keys() == b.paths.keys()
    for name in a.paths:
        for field in ("item", "sid", "feat", "mask"):
            x, y = getattr(a.paths[name], field), getattr(b.paths[name], field)
            assert x.dtype == y.dtype and x.shape == y.shape, (name, field)
            torch.testing.assert_close(x, y, rtol=0, atol=0)


def test_collate_record_equals_collate_of_the_same_row():
    """A sample given as numpy arrays collates to exactly the batch of its samples.parquet row: every list
    column optional but ids and ts, lists longer and shorter than their pathway, empty pathways, unknown items."""
    from onerec.model import ModelConfig
    from onerec.samples import SidTable, collate, collate_record

    rng = np.random.default_rng(1)
    sids = SidTable(item_ids=np.arange(1, 40, dtype=np.int64), sids=rng.integers(0, 16, (39, 3)))
    cfg = ModelConfig(pathways=(("short", 6), ("positive", 3), ("long", 4)), item_buckets=64, item_feat_dim=10)
    optional = ["play_time_ms", "duration_ms", "like", "follow", "comment", "forward", "weight"]
    for trial in range(40):
        record = {}
        for prefix in ("short", "pos", "long"):
            n = int(rng.integers(0, 10))
            record[f"{prefix}_item_id"] = rng.integers(1, 50, n)        # ids >= 40 have no semantic ID
            record[f"{prefix}_ts"] = np.sort(rng.integers(0, 10**9, n))
            for name in optional:
                if rng.random() < 0.5:
                    record[f"{prefix}_{name}"] = rng.integers(0, 30000, n)
        ts, item = int(rng.integers(10**9, 2 * 10**9)), int(rng.integers(0, 45))
        row = pa.table({"user_id": pa.array([1], pa.int64()), "item_id": pa.array([item], pa.int64()),
                        "ts": pa.array([ts], pa.int64()),
                        **{k: pa.array([v.tolist()], pa.list_(pa.int64())) for k, v in record.items()}})
        _assert_same_batch(collate_record(record, ts, cfg, sids, item_id=item), collate(row, cfg, sids))


def test_the_service_history_collates_like_its_samples_row():
    """What the service feeds the model for an explicit history (numpy, no arrow) equals collate of the arrow
    row that the same history makes: defaults of ts, positives, truncation to the pathway lengths."""
    from onerec.model import ModelConfig
    from onerec.samples import SidTable, collate, collate_record
    from onerec.serving import Event, _history_record, _history_row

    rng = np.random.default_rng(2)
    sids = SidTable(item_ids=np.arange(1, 30, dtype=np.int64), sids=rng.integers(0, 16, (29, 3)))
    cfg = ModelConfig(pathways=(("short", 8), ("positive", 4), ("long", 4)), item_buckets=64)
    now = 1_700_000_000_000
    for n in (0, 1, 3, 8, 25):
        events = [Event(item_id=int(rng.integers(1, 30)), play_time_ms=int(rng.integers(0, 20000)),
                        duration_ms=int(rng.choice([0, 10000])), like=bool(rng.random() < 0.2),
                        ts=None if rng.random() < 0.5 else now - int(rng.integers(10**3, 10**8))) for _ in range(n)]
        record, ts = _history_record(events, now)
        batch = collate_record(record, ts, cfg, sids)
        _assert_same_batch(batch, collate(_history_row(events, now), cfg, sids))
        assert int(batch.paths["short"].mask.sum()) == min(n, 8) and not batch.paths["long"].mask.any()
