"""From the features stage's `samples.parquet` rows to model batches (`onerec.model.Batch`).

A sample is the newest impression of a user with its context (OneRec-V2, Figure 3c). Every context item
becomes (hashed item id, its semantic ID, numeric side features); the static profile is feature-hashed into
a fixed-width vector so any dataset's users table fits the same model. The target is the semantic ID of the
impressed item. Everything here is vectorised numpy on arrow buffers: collation runs in the training loop.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from onerec.model import Batch, ModelConfig, Pathway

ITEM_FEATURES = ("log_play_s", "log_duration_s", "completion", "like", "follow", "comment", "forward", "log_age_h")
# which samples.parquet list columns feed each pathway (prefix of the columns)
PATHWAY_PREFIX = {"short": "short", "positive": "pos", "long": "long"}


@dataclass
class SidTable:
    """item_id -> semantic ID (levels) as sorted arrays, for vectorised lookup. Unknown items map to -1."""
    item_ids: np.ndarray     # (n,) sorted int64
    sids: np.ndarray         # (n, levels) int64

    @classmethod
    def from_table(cls, table: pa.Table) -> "SidTable":
        """The tokenize stage's sids.parquet: item_id int64, sid list<int32> (one entry per level)."""
        ids = table["item_id"].to_numpy()
        col = table["sid"].combine_chunks()
        levels = int(pc.max(pc.list_value_length(col)).as_py() or 0)
        sids = pc.list_flatten(col).to_numpy(zero_copy_only=False).reshape(len(ids), levels)
        order = np.argsort(ids, kind="stable")
        return cls(ids[order].astype(np.int64), sids[order].astype(np.int64))

    def vocab_sizes(self, sizes: list[int] | None = None) -> tuple[int, ...]:
        """Codes per level: the codebook sizes, and for a disambiguation level beyond them its largest index + 1."""
        sizes = list(sizes or [])
        extra = [int(self.sids[:, i].max()) + 1 if len(self.sids) else 1 for i in range(len(sizes), self.sids.shape[1])]
        return tuple(sizes + extra)

    def lookup(self, items: np.ndarray) -> np.ndarray:
        pos = np.clip(np.searchsorted(self.item_ids, items), 0, len(self.item_ids) - 1)
        hit = self.item_ids[pos] == items if len(self.item_ids) else np.zeros(items.shape, bool)
        return np.where(hit[..., None], self.sids[pos], -1)


def _padded(col: pa.ChunkedArray | pa.Array, length: int, fill=0, keep_last: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """A list column (oldest first) -> a (B, length) array and its mask: the newest `length` entries,
    left-aligned (position 0 is the oldest kept); masked positions hold `fill`."""
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    # straight from the arrow buffers: offsets index the (unsliced) child values; a null list holds no entries
    # whatever its offsets say
    offsets = col.offsets.to_numpy().astype(np.int64)
    lengths = np.diff(offsets) * col.is_valid().to_numpy(zero_copy_only=False)
    flat = col.values.to_numpy(zero_copy_only=False)
    take = np.minimum(lengths, length)
    start = offsets[1:] - take if keep_last else offsets[:-1]
    mask = np.arange(length)[None, :] < take[:, None]
    out = np.full((len(lengths), length), fill, dtype=flat.dtype if lengths.sum() else np.int64)
    out[mask] = flat[(start[:, None] + np.arange(length)[None, :])[mask]]
    return out, mask


def _hash_bucket(values: np.ndarray, buckets: int) -> np.ndarray:
    """Item ids -> embedding rows 1..buckets-1 (row 0 is padding). A multiplicative hash spreads id ranges."""
    return ((values.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(40)) % np.uint64(buckets - 1) + 1


def _profile(table: pa.Table, dim: int) -> np.ndarray:
    """Static profile columns -> signed feature hashing into `dim` slots (numbers: sign*log1p|x|; strings
    and categories: one-hot of (column, value))."""
    B = table.num_rows
    out = np.zeros((B, dim), dtype=np.float32)
    for name in table.column_names:
        if not name.startswith("profile_"):
            continue
        col = table[name]
        h = zlib.crc32(name.encode())
        if pa.types.is_integer(col.type) or pa.types.is_floating(col.type) or pa.types.is_boolean(col.type):
            x = np.nan_to_num(pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64))
            out[:, h % dim] += (np.sign(x) * np.log1p(np.abs(x))).astype(np.float32) * (1 if h & 1 << 20 else -1)
        else:
            vals = col.cast(pa.string()).to_pylist()
            idx = np.array([zlib.crc32(f"{name}={v}".encode()) % dim for v in vals])
            out[np.arange(B), idx] += 1.0
    return out


def _item_features(get, prefix: str, now_ms: np.ndarray) -> np.ndarray:
    """(B, length, len(ITEM_FEATURES)) side features of one pathway; `get(column)` gives a list column padded to
    the pathway's length with its mask, or None when the column is absent."""
    ts, mask = get(f"{prefix}_ts")
    feats = np.zeros((*ts.shape, len(ITEM_FEATURES)), dtype=np.float32)

    def col(name):
        padded = get(f"{prefix}_{name}")
        return None if padded is None else padded[0].astype(np.float64)

    play, dur = col("play_time_ms"), col("duration_ms")
    if play is not None:
        feats[..., 0] = np.log1p(np.maximum(play, 0) / 1000)
    if dur is not None:
        feats[..., 1] = np.log1p(np.maximum(dur, 0) / 1000)
        if play is not None:
            feats[..., 2] = np.clip(np.where(dur > 0, play / np.maximum(dur, 1), 0), 0, 2)
    for i, flag in enumerate(("like", "follow", "comment", "forward")):
        v = col(flag)
        if v is not None:
            feats[..., 3 + i] = v
    if prefix == "long":   # cluster weight instead of flags: how many lifelong items the representative stands for
        weight = col("weight")
        feats[..., 3] = np.log1p(weight if weight is not None else 0)
    feats[..., 7] = np.log1p(np.maximum(now_ms[:, None] - ts, 0) / 3.6e6)
    return feats * mask[..., None]


def _fit_width(x: np.ndarray, width: int) -> np.ndarray:
    if x.shape[-1] >= width:
        return np.ascontiguousarray(x[..., :width])
    return np.concatenate([x, np.zeros((*x.shape[:-1], width - x.shape[-1]), dtype=x.dtype)], axis=-1)


def _pathway(get, prefix: str, now_ms: np.ndarray, cfg: ModelConfig, sids: SidTable) -> Pathway:
    items, mask = get(f"{prefix}_item_id")
    sid = sids.lookup(items)
    known = sid >= 0
    return Pathway(item=torch.from_numpy((_hash_bucket(items, cfg.item_buckets) * mask).astype(np.int64)),
                   sid=torch.from_numpy(np.where(known & mask[..., None], sid, 0)),
                   feat=torch.from_numpy(_fit_width(_item_features(get, prefix, now_ms), cfg.item_feat_dim)),
                   mask=torch.from_numpy(mask))


def collate(table: pa.Table, cfg: ModelConfig, sids: SidTable) -> Batch:
    """samples.parquet rows -> a Batch. Rows whose target item has no semantic ID must be filtered before."""
    now = table["ts"].to_numpy()
    present = set(table.schema.names)
    paths = {}
    for name, length in cfg.pathways:
        prefix = PATHWAY_PREFIX[name]

        def get(column, length=length, prefix=prefix):    # the id and ts columns are required: table[...] raises without them
            required = column in (f"{prefix}_item_id", f"{prefix}_ts")
            return _padded(table[column], length) if required or column in present else None

        paths[name] = _pathway(get, prefix, now, cfg, sids)
    target = sids.lookup(table["item_id"].to_numpy())
    return Batch(user=torch.from_numpy(_profile(table, cfg.user_feat_dim)), paths=paths,
                 target=torch.from_numpy(target))


def collate_record(record: dict[str, np.ndarray], ts_ms: int, cfg: ModelConfig, sids: SidTable,
                   item_id: int = 0) -> Batch:
    """One sample given as numpy arrays -> a one-row Batch, equal to `collate` of the samples.parquet row with
    these list columns (`record`, e.g. "short_item_id" -> ids oldest first), `ts` and `item_id`, and no profile
    columns. The service builds a request's batch this way: converting a history to an arrow table and back
    costs more than the rest of its collation."""
    def pad(values: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
        take = min(len(values), length)     # the newest `length`, left-aligned, like _padded
        out = np.zeros((1, length), dtype=values.dtype if len(values) else np.int64)
        out[0, :take] = values[len(values) - take:]
        return out, np.arange(length)[None] < take

    now = np.array([ts_ms], dtype=np.int64)
    paths = {}
    for name, length in cfg.pathways:
        prefix = PATHWAY_PREFIX[name]

        def get(column, length=length, prefix=prefix):
            required = column in (f"{prefix}_item_id", f"{prefix}_ts")
            return pad(np.asarray(record[column]), length) if required or column in record else None

        paths[name] = _pathway(get, prefix, now, cfg, sids)
    return Batch(user=torch.zeros(1, cfg.user_feat_dim), paths=paths,
                 target=torch.from_numpy(sids.lookup(np.array([item_id], dtype=np.int64))))


def positive_rows(t: pa.Table) -> pa.Table:
    """The rows with positive feedback: a like, a follow, or at least 80% of the video watched (SFT's `positive`)."""
    watched = pc.divide(pc.cast(t["play_time_ms"], pa.float64()),
                        pc.max_element_wise(pc.cast(t["duration_ms"], pa.float64()), 1.0))
    pos = pc.or_(pc.or_(pc.equal(t["like"], 1), pc.equal(t["follow"], 1)), pc.greater_equal(watched, 0.8))
    return t.filter(pc.fill_null(pos, False))


def with_known_target(table: pa.Table, sids: SidTable) -> pa.Table:
    """Drop samples whose impressed item has no semantic ID yet (it arrived after the tokenizer ran)."""
    known = (sids.lookup(table["item_id"].to_numpy())[:, 0] >= 0)
    return table.filter(pa.array(known))
