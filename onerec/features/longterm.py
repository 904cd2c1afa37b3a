"""Long-term pathway (OneRec-V1): a user's lifelong items compressed by k-means, keeping the item
nearest each centroid.

One numpy kernel serves both engines (Spark calls it per user in `applyInPandas`, the reference per
user in a loop), so their results agree to the bit; it avoids BLAS (distances are explicit sums) so the
thread count of a Spark worker cannot change a rounding.

Item vectors, first match wins:
1. `vectors.parquet` of the newest `embed` output strictly before day D (item_id, vector list<float32>),
   L2-normalised. Strictly before: embed runs after features in the DAG, so reading embed(D) would make
   features(D) depend on its own downstream. Items the embedding does not cover get the zero vector:
   they gather in (at most) one "not yet embedded" cluster instead of pretending to a position.
2. Otherwise content vectors: the item's author and tags hashed (signed feature hashing, blake2b) into
   `hash_dim` dimensions and L2-normalised; an item with neither hashes its own id. The learned id
   embeddings the paper would use do not exist before training, and a vector learned from the history
   (co-occurrence SVD) would make day D depend on all earlier days; author and tags are what the
   catalogue already knows, are stable, and group a user's history by creator and topic, which is what
   the clusters are for.

Algorithm per user: the `lifelong_len` most recent distinct items (each at its last interaction),
k-means++ seeded with (seed, user_id), at most `kmeans_iters` Lloyd steps, then per non-empty cluster
the item nearest the centroid (ties: the more recent item); weight = the cluster's size. Users with at
most `long_clusters` lifelong items keep all of them (weight 1). Output oldest first.
"""
from __future__ import annotations

import functools
import hashlib

import numpy as np
import pandas as pd


def _missing(x) -> bool:
    return x is None or x is pd.NA or (isinstance(x, float) and x != x)


def _author_key(a) -> str | None:
    """Author ids travel as strings (Spark hands nullable int64 columns to pandas as float64, which
    would round ids above 2**53); ints and their decimal strings give the same key."""
    return None if _missing(a) else str(a) if isinstance(a, str) else str(int(a))


@functools.lru_cache(maxsize=1 << 16)
def _hash(feature: str, dim: int) -> tuple[int, float]:
    h = int.from_bytes(hashlib.blake2b(feature.encode(), digest_size=8).digest(), "little")
    return h % dim, (1.0 if h >> 63 else -1.0)


def _unit(X: np.ndarray) -> np.ndarray:
    norm = np.sqrt((X * X).sum(axis=1, keepdims=True))
    return np.divide(X, norm, out=np.zeros_like(X), where=norm > 0)


def content_vectors(item_ids, author_ids, tags, dim: int) -> np.ndarray:
    X = np.zeros((len(item_ids), dim), dtype=np.float64)
    for r, (item, author, tag_list) in enumerate(zip(item_ids, author_ids, tags)):
        key = _author_key(author)
        feats = [] if key is None else [f"a:{key}"]
        feats += [f"t:{t}" for t in (tag_list if tag_list is not None else ()) if t is not None]
        for f in feats or [f"i:{int(item)}"]:
            j, s = _hash(f, dim)
            X[r, j] += s
    return _unit(X)


def embed_vectors(vectors) -> np.ndarray:
    """Rows of a list<float32> column (None where the item has no vector) -> unit rows, zeros if missing."""
    dim = next((len(v) for v in vectors if v is not None), 1)
    X = np.zeros((len(vectors), dim), dtype=np.float64)
    for r, v in enumerate(vectors):
        if v is not None and len(v) == dim:
            X[r] = np.asarray(v, dtype=np.float64)
    return _unit(X)


def _sqdist(X: np.ndarray, C: np.ndarray) -> np.ndarray:
    return ((X[:, None, :] - C[None, :, :]) ** 2).sum(axis=-1)


def kmeans_representatives(X: np.ndarray, k: int, iters: int, seed) -> tuple[np.ndarray, np.ndarray]:
    """Indices (ascending) of the items nearest each non-empty cluster's centroid, and cluster sizes."""
    n = len(X)
    if n <= k:
        return np.arange(n), np.ones(n, dtype=np.int32)
    rng = np.random.default_rng(seed)
    first = int(rng.integers(n))
    centers = [first]
    d2 = ((X - X[first]) ** 2).sum(axis=1)
    while len(centers) < k:                       # k-means++: D^2 sampling
        total = d2.sum()
        if not total > 0:                         # fewer than k distinct points
            break
        i = int(rng.choice(n, p=d2 / total))
        centers.append(i)
        d2 = np.minimum(d2, ((X - X[i]) ** 2).sum(axis=1))
    C = X[centers].copy()
    labels = _sqdist(X, C).argmin(axis=1)
    for _ in range(iters):
        for j in range(len(C)):
            members = labels == j
            if members.any():                     # an empty cluster keeps its centroid
                C[j] = X[members].mean(axis=0)
        new = _sqdist(X, C).argmin(axis=1)
        if np.array_equal(new, labels):
            break
        labels = new
    D = _sqdist(X, C)
    sizes = np.bincount(labels, minlength=len(C))
    reps = n - 1 - D[::-1].argmin(axis=0)         # nearest item per centroid; ties -> the most recent
    weight = {}
    for j in np.flatnonzero(sizes):
        weight[int(reps[j])] = weight.get(int(reps[j]), 0) + int(sizes[j])
    idx = np.array(sorted(weight), dtype=np.int64)
    return idx, np.array([weight[i] for i in idx], dtype=np.int32)


def compress(user_id: int, life, p, vector_mode: str) -> dict:
    """One user's long-term pathway. `life`: records (dicts) or a DataFrame of (item_id, ts, author_id,
    tags[, vector]), one per distinct lifelong item, any order."""
    rows = life.to_dict("records") if hasattr(life, "to_dict") else list(life)
    rows = sorted(rows, key=lambda r: (int(r["ts"]), int(r["item_id"])))[-p.lifelong_len:]
    if len(rows) <= p.long_clusters:          # nothing to compress (most users): no vectors needed
        idx, weight = np.arange(len(rows)), np.ones(len(rows), dtype=np.int32)
    else:
        if vector_mode == "embed":
            X = embed_vectors([r.get("vector") for r in rows])
        else:
            X = content_vectors([r["item_id"] for r in rows], [r["author_id"] for r in rows],
                                [r["tags"] for r in rows], p.hash_dim)
        idx, weight = kmeans_representatives(X, p.long_clusters, p.kmeans_iters,
                                             [p.seed, int(user_id) & 0xFFFFFFFFFFFFFFFF])
    kept = [rows[i] for i in idx]
    authors = [_author_key(r["author_id"]) for r in kept]
    return {
        "user_id": int(user_id),
        "long_item_id": [int(r["item_id"]) for r in kept],
        "long_author_id": [None if a is None else int(a) for a in authors],
        "long_ts": [int(r["ts"]) for r in kept],
        "long_weight": weight.astype(np.int32).tolist(),
        "lifelong_len": len(rows),
    }
