"""Residual k-means (RQ-KMeans) semantic IDs with faiss, plain or balanced, with collision handling.

Level l clusters what levels < l left unexplained (the residuals) with one global codebook of K_l
centroids; an item's semantic ID (SID) is its code at every level (OneRec-V1: RQ-Kmeans, 3 levels x
8192 codes). OneRec makes every level *balanced* (clusters of equal size) so that no code is a dumping
ground and the decoder's vocabulary is used evenly. Balanced clustering here is Lloyd's algorithm
whose assignment step is capacity-constrained:

  1. every point fetches its `candidates` nearest centroids (a faiss BLAS search; in later Lloyd
     iterations of big codebooks only among the centroids next to its current one);
  2. in rounds, every unassigned point proposes to its best remaining candidate; every centroid
     accepts the closest proposals up to its free capacity, ceil(n/k)*(1+slack); the rest move on;
  3. points whose candidates are all full search again among the centroids with room left.

Every round is a vectorized sort, so a level of 1M points costs about one faiss search (the min-cost
flow of k-means-constrained is O(n k) memory and hours at this size). Centroids are fit on a seeded
subsample of `points_per_centroid * K` residuals (as faiss.Kmeans does), then all points are assigned.
"""
from __future__ import annotations

import contextlib
import json
import math
import warnings
from dataclasses import asdict, dataclass, field

import faiss
import numpy as np
from tqdm.auto import tqdm

from onerec.errors import BadInput
from onerec.item.vectors import safetensors_metadata

GRAPH_MIN_K = 1024        # from this codebook size on, Lloyd iterations search only neighbouring centroids
GRAPH_NEIGHBOURS = 64     # centroids next to a point's current one that it may move to in one iteration


@dataclass
class RQConfig:
    levels: int = 3
    codebook_size: int | list = 8192      # per level (an int for all levels, or a list)
    balanced: bool = True                 # OneRec: clusters of equal size at every level
    slack: float = 0.05                   # balanced: a cluster may hold ceil(n/K)*(1+slack) items
    niter: int = 20                       # Lloyd iterations per level, at most
    tol: float = 0.001                    # ...stop earlier once at most 0.1% of the points change code
    points_per_centroid: int = 32         # training subsample per centroid (faiss.Kmeans default: 256)
    min_points_per_code: int = 10         # smaller catalogs get smaller codebooks (with a warning)
    candidates: int = 16                  # balanced: nearest centroids a point may end up in before re-search
    search: str = "auto"                  # exact | graph | auto (graph when K >= GRAPH_MIN_K): see neighbour_search
    seed: int = 0
    progress: bool = True

    @classmethod
    def from_dict(cls, d: dict) -> "RQConfig":
        return cls(**{k: v for k, v in (d or {}).items() if k in cls.__dataclass_fields__})

    def sizes(self) -> list[int]:
        k = self.codebook_size
        sizes = [int(k)] * self.levels if isinstance(k, (int, np.integer)) else [int(v) for v in k]
        if len(sizes) != self.levels or min(sizes) < 2:
            raise BadInput(f"tokenize.codebook_size {k!r} does not give {self.levels} sizes >= 2")
        return sizes


def effective_sizes(n: int, cfg: RQConfig) -> list[int]:
    """Codebook sizes that a catalog of n items can fill: at most n / min_points_per_code per level."""
    limit = max(2, n // max(1, cfg.min_points_per_code))
    sizes = cfg.sizes()
    reduced = [min(k, limit) for k in sizes]
    if reduced != sizes:
        warnings.warn(f"catalog of {n} items is small for codebooks {sizes}: using {reduced} "
                      f"(at least {cfg.min_points_per_code} items per code)", stacklevel=2)
    return reduced


def capacity(n: int, k: int, slack: float) -> int:
    """Most items a balanced cluster may hold: ceil(n/k), plus `slack` when that leaves room."""
    return max(math.ceil(n / k), int(n / k * (1 + slack)))


# -- nearest centroids -------------------------------------------------------------------------
def exact_search(x: np.ndarray, centroids: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """(squared distances, ids) of the m nearest centroids: faiss IndexFlatL2 (one BLAS GEMM)."""
    index = faiss.IndexFlatL2(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    D, I = index.search(np.ascontiguousarray(x, dtype=np.float32), m)
    return D, I.astype(np.int64)


def neighbour_search(x: np.ndarray, codes: np.ndarray, centroids: np.ndarray, m: int,
                     neighbours: int = GRAPH_NEIGHBOURS) -> tuple[np.ndarray, np.ndarray]:
    """The m nearest centroids among the `neighbours` nearest centroids of each point's current one.

    Between two Lloyd iterations a point moves, if at all, to a centroid next to its old one, so after
    the first (exact) iteration the search needs n x neighbours distances instead of n x K: at K=8192
    that is 128x less work (the candidate idea of k^2-means, Yu et al. 2018).
    """
    k = len(centroids)
    nb = exact_search(centroids, centroids, min(neighbours, k))[1]          # (K, C), itself first
    m = min(m, nb.shape[1])
    order = np.argsort(codes, kind="stable")                                # points grouped by cluster
    bounds = np.searchsorted(codes[order], np.arange(k + 1))
    cn = np.einsum("ij,ij->i", centroids, centroids)
    xn = np.einsum("ij,ij->i", x, x)
    D, I = np.empty((len(x), m), dtype=np.float32), np.empty((len(x), m), dtype=np.int64)
    with _one_blas_thread():  # thousands of tiny GEMMs: thread start-up would cost more than the math
        for j in np.flatnonzero(bounds[1:] > bounds[:-1]):
            rows, cand = order[bounds[j]:bounds[j + 1]], nb[j]
            d = xn[rows, None] - 2 * (x[rows] @ centroids[cand].T) + cn[cand][None, :]
            top = np.argsort(d, axis=1, kind="stable")[:, :m]
            D[rows], I[rows] = np.take_along_axis(d, top, axis=1), cand[top]
    return D, I


def _one_blas_thread():
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:                       # optional: only speed depends on it
        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas")


def balanced_assign(x: np.ndarray, centroids: np.ndarray, cap: int, D: np.ndarray, I: np.ndarray) -> np.ndarray:
    """Assign every point to a centroid so that none holds more than `cap` points, each point going
    to the closest centroid that still has room when its turn comes (closest proposals first).
    D, I: each point's candidate centroids, nearest first (exact_search or neighbour_search)."""
    n, k = len(x), len(centroids)
    if cap * k < n:
        raise ValueError(f"capacity {cap} x {k} centroids < {n} points")
    D, I = D.copy(), I.copy()
    codes = np.full(n, -1, dtype=np.int64)
    load = np.zeros(k, dtype=np.int64)
    ptr = np.zeros(n, dtype=np.int64)          # the candidate each point proposes to next
    pending = np.arange(n)
    while pending.size:
        stuck = pending[ptr[pending] >= I.shape[1]]
        if stuck.size:                         # all candidates full: search among centroids with room
            open_ = np.flatnonzero(load < cap)
            m = min(I.shape[1], len(open_))
            Ds, Is = exact_search(x[stuck], centroids[open_], m)
            D[stuck], I[stuck] = np.inf, -1
            D[stuck, :m], I[stuck, :m] = Ds, open_[Is]
            ptr[stuck] = 0
        c, d = I[pending, ptr[pending]], D[pending, ptr[pending]]
        order = np.lexsort((pending, d, c))    # by centroid, then distance, then point id: deterministic
        p, c = pending[order], c[order]
        first = np.r_[True, c[1:] != c[:-1]]
        rank = np.arange(len(c)) - np.maximum.accumulate(np.where(first, np.arange(len(c)), 0))
        accept = (c >= 0) & (rank < cap - load[np.maximum(c, 0)])
        codes[p[accept]] = c[accept]
        load += np.bincount(c[accept], minlength=k)
        ptr[p[~accept]] += 1
        pending = np.sort(p[~accept])
    return codes


def assign(x: np.ndarray, centroids: np.ndarray, *, balanced: bool, cap: int = 0, candidates: int = 16,
           previous: np.ndarray | None = None) -> np.ndarray:
    """Nearest (plain) or capacity-constrained (balanced) codes; with `previous` codes the candidates
    come from neighbour_search instead of a search over all centroids."""
    m = min(candidates, len(centroids)) if balanced else 1
    D, I = (exact_search(x, centroids, m) if previous is None
            else neighbour_search(x, previous, centroids, m))
    return balanced_assign(x, centroids, cap, D, I) if balanced else I[:, 0].copy()


# -- one level -----------------------------------------------------------------------------------
def update_centroids(x: np.ndarray, codes: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Means of the assigned points; an empty cluster splits the biggest one (as faiss does)."""
    k = len(centroids)
    counts = np.bincount(codes, minlength=k)
    order = np.argsort(codes, kind="stable")
    used = np.flatnonzero(counts)
    starts = np.searchsorted(codes[order], used)
    new = centroids.copy()
    new[used] = np.add.reduceat(x[order], starts, axis=0) / counts[used, None]
    # faiss's split: the empty centroid becomes a copy of the biggest one, the two pushed apart by
    # +-eps in alternating dimensions (not a rescaling, which would split by norm only)
    sign = np.where(np.arange(new.shape[1]) % 2 == 0, 1.0, -1.0).astype(np.float32) / 1024
    for j in np.flatnonzero(counts == 0):
        big = int(np.argmax(counts))
        new[j], new[big] = new[big] * (1 + sign), new[big] * (1 - sign)
        counts[j] = counts[big] // 2
        counts[big] -= counts[j]
    return new


def use_graph(search: str, k: int) -> bool:
    if search not in ("auto", "exact", "graph"):
        raise BadInput(f"unknown tokenize.search {search!r} (exact | graph | auto)")
    return search == "graph" or (search == "auto" and k >= GRAPH_MIN_K)


def lloyd(x: np.ndarray, init: np.ndarray, niter: int, *, balanced: bool = False, slack: float = 0.05,
          candidates: int = 16, search: str = "auto", tol: float = 0.0, desc: str = "") -> tuple[np.ndarray, np.ndarray]:
    """Lloyd iterations from `init`; with balanced=True the assignment step is capacity-constrained.
    Stops after `niter` iterations or when at most a `tol` share of the points changed code.
    Returns (centroids, the codes of the last assignment step)."""
    centroids = np.ascontiguousarray(init, dtype=np.float32)
    cap = capacity(len(x), len(centroids), slack)
    graph = use_graph(search, len(centroids))
    codes = None
    for _ in tqdm(range(niter), desc=desc or "k-means", leave=False, disable=not desc):
        new = assign(x, centroids, balanced=balanced, cap=cap, candidates=candidates,
                     previous=codes if graph else None)
        centroids = update_centroids(x, new, centroids)
        changed = 1.0 if codes is None else float(np.mean(new != codes))
        codes = new
        if changed <= tol:
            break                               # (tol=0: converged, the next update would change nothing)
    return centroids, codes


# -- the codebooks -------------------------------------------------------------------------------
@dataclass
class Codebooks:
    centroids: list[np.ndarray]           # level -> (K_l, d) float32
    meta: dict = field(default_factory=dict)

    @property
    def sizes(self) -> list[int]:
        return [len(c) for c in self.centroids]

    @property
    def dim(self) -> int:
        return self.centroids[0].shape[1]

    def encode(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Greedy residual codes with the frozen codebooks (nearest centroid per level) and the final residuals."""
        r = np.array(x, dtype=np.float32, copy=True)
        codes = np.zeros((len(r), len(self.centroids)), dtype=np.int64)
        for level, c in enumerate(self.centroids):
            codes[:, level] = exact_search(r, c, 1)[1][:, 0]
            r -= c[codes[:, level]]
        return codes, r

    def decode(self, codes: np.ndarray) -> np.ndarray:
        return sum(c[codes[:, level]] for level, c in enumerate(self.centroids))

    def to_bytes(self) -> bytes:
        from safetensors.numpy import save

        tensors = {f"level_{i}": np.ascontiguousarray(c, dtype=np.float32) for i, c in enumerate(self.centroids)}
        return save(tensors, metadata={"meta": json.dumps(self.meta, sort_keys=True, default=str)})

    @classmethod
    def from_bytes(cls, data: bytes) -> "Codebooks":
        from safetensors.numpy import load

        tensors = load(data)
        levels = sorted(tensors, key=lambda k: int(k.split("_")[1]))
        meta = safetensors_metadata(data)
        return cls([tensors[k] for k in levels], json.loads(meta.get("meta", "{}")))


def fit(x: np.ndarray, cfg: RQConfig) -> tuple[Codebooks, np.ndarray, dict]:
    """Fit the codebooks on x (n, d) and assign every row: (codebooks, codes (n, L), stats)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    n = len(x)
    if n < 2:
        raise BadInput(f"{n} item vector(s): semantic IDs need at least 2 items")
    sizes = effective_sizes(n, cfg)
    residual = x.copy()
    codes = np.zeros((n, len(sizes)), dtype=np.int64)
    centroids, stats = [], {"sizes": sizes, "residual_error": []}
    base = float((x.astype(np.float64) ** 2).sum(1).mean()) or 1.0
    for level, k in enumerate(tqdm(sizes, desc="rq-kmeans levels", disable=not cfg.progress)):
        rng = np.random.default_rng([cfg.seed, level])
        s = min(n, cfg.points_per_centroid * k)
        rows = np.sort(rng.choice(n, s, replace=False)) if s < n else np.arange(n)
        sample = residual[rows]
        init = sample[rng.choice(len(sample), k, replace=False)]
        c, sample_codes = lloyd(sample, init, cfg.niter, balanced=cfg.balanced, slack=cfg.slack,
                                candidates=cfg.candidates, search=cfg.search, tol=cfg.tol,
                                desc=f"level {level} (K={k})" if cfg.progress else "")
        codes[:, level] = _assign_all(residual, c, rows, sample_codes, cfg)
        residual -= c[codes[:, level]]
        centroids.append(c)
        stats["residual_error"].append(float((residual.astype(np.float64) ** 2).sum(1).mean()) / base)
    meta = {"config": asdict(cfg), "sizes": sizes, "dim": int(x.shape[1]), "n_fit": n}
    return Codebooks(centroids, meta), codes, stats


def _assign_all(x: np.ndarray, centroids: np.ndarray, rows: np.ndarray, row_codes: np.ndarray, cfg: RQConfig) -> np.ndarray:
    """Codes for every point after a level is fitted. With neighbour search on, the training rows
    search around their last code and only the other points need the full n x K search."""
    k = len(centroids)
    cap = capacity(len(x), k, cfg.slack)
    if not use_graph(cfg.search, k):
        return assign(x, centroids, balanced=cfg.balanced, cap=cap, candidates=cfg.candidates)
    m = min(cfg.candidates, k) if cfg.balanced else 1
    D, I = np.empty((len(x), m), dtype=np.float32), np.empty((len(x), m), dtype=np.int64)
    D[rows], I[rows] = neighbour_search(x[rows], row_codes, centroids, m)
    others = np.setdiff1d(np.arange(len(x)), rows, assume_unique=True)
    if len(others):
        D[others], I[others] = exact_search(x[others], centroids, m)
    return balanced_assign(x, centroids, cap, D, I) if cfg.balanced else I[:, 0].copy()


# -- collisions ----------------------------------------------------------------------------------
COLLISION_MODES = ("reassign", "extra_level", "none")


def sid_keys(codes: np.ndarray, sizes: list[int]) -> np.ndarray:
    """One int64 per SID (mixed radix over the level sizes): cheap set membership for millions of items."""
    key = np.zeros(len(codes), dtype=np.int64)
    for level, k in enumerate(sizes):
        key = key * k + codes[:, level]
    return key


def resolve_collisions(codes: np.ndarray, x: np.ndarray, books: Codebooks, mode: str,
                       taken: np.ndarray | None = None, extra_taken: dict | None = None) -> np.ndarray:
    """Make SIDs unique. `codes` are the new items' codes; `taken` the keys (sid_keys) of SIDs that
    existing items keep. Among items sharing a code, the one closest to it keeps it.

    reassign:    the others move to the nearest free code, deepest level first (SIDs keep L tokens,
                 which the decoder's fixed position-specific heads expect);
    extra_level: TIGER's fix: an (L+1)-th token numbers the items sharing the L codes (0, 1, ...);
                 `extra_taken` maps a taken L-level key to the next free number;
    none:        collisions are kept (SID -> several items).
    """
    if mode not in COLLISION_MODES:
        raise BadInput(f"unknown collision mode {mode!r}; known: {', '.join(COLLISION_MODES)}")
    codes = np.array(codes, dtype=np.int64, copy=True)
    if mode == "none" or len(codes) == 0:
        return codes
    sizes = books.sizes
    keys = sid_keys(codes, sizes)
    err = ((x - books.decode(codes)) ** 2).sum(1)
    order = np.lexsort((np.arange(len(codes)), err, keys))       # within a code: closest first
    if mode == "extra_level":
        nxt = dict(extra_taken or {})
        extra = np.zeros(len(codes), dtype=np.int64)
        for i in order:
            k = int(keys[i])
            extra[i] = nxt.get(k, 0)
            nxt[k] = extra[i] + 1
        return np.concatenate([codes, extra[:, None]], axis=1)

    used = set(map(int, taken)) if taken is not None else set()
    movers = []
    for i in order:
        k = int(keys[i])
        if k in used:
            movers.append(i)
        else:
            used.add(k)
    if not movers:
        return codes
    movers = np.array(movers)
    # Batched: the nearest last-level codes for every mover, walked in order until one is free.
    last = books.centroids[-1]
    prefix_residual = x[movers] - (books.decode(codes[movers]) - last[codes[movers, -1]])
    m = min(len(last), 64)
    _, cand = exact_search(prefix_residual, last, m)
    base = (keys[movers] - codes[movers, -1])                       # key with last code 0
    for row, i in enumerate(movers):
        for c in cand[row]:
            if int(base[row] + c) not in used:
                codes[i, -1] = c
                used.add(int(base[row] + c))
                break
        else:                                                       # the prefix is full: search deeper
            codes[i] = _nearest_free_dfs(x[i], books, used, codes[i])
            used.add(int(sid_keys(codes[i:i + 1], sizes)[0]))
    return codes


def _nearest_free_dfs(x: np.ndarray, books: Codebooks, used: set, prefer: np.ndarray) -> np.ndarray:
    """Depth-first over levels, the item's own code first then by distance: the first free SID found
    changes the deepest levels first."""
    sizes = books.sizes

    def walk(level: int, r: np.ndarray, key: int, path: list):
        c = books.centroids[level]
        order = np.argsort(((r[None, :] - c) ** 2).sum(1), kind="stable")
        order = np.r_[prefer[level], order[order != prefer[level]]]
        for code in order:
            k = key * sizes[level] + int(code)
            if level == len(sizes) - 1:
                if k not in used:
                    return path + [int(code)]
            elif (found := walk(level + 1, r - c[code], k, path + [int(code)])) is not None:
                return found
        return None

    found = walk(0, x.astype(np.float32), 0, [])
    if found is None:
        raise BadInput("every semantic ID is taken: the codebooks are too small for the catalog "
                       "(raise tokenize.codebook_size or levels, or use collision=extra_level)")
    return np.array(found, dtype=np.int64)


def extra_level_state(sids: np.ndarray, sizes: list[int]) -> dict:
    """For extra_level SIDs (n, L+1): the next free disambiguation number per L-level key."""
    keys = sid_keys(sids[:, :-1], sizes)
    out: dict = {}
    for k, e in zip(keys.tolist(), sids[:, -1].tolist()):
        out[k] = max(out.get(k, 0), e + 1)
    return out

