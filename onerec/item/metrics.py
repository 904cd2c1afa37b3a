"""Quality of semantic IDs: code usage, entropy, cluster sizes, collisions, prefix purity.

Definitions (the same for our SIDs and for the published SID sets we compare against):
- utilization of level l: share of the K_l codes used by at least one item;
- entropy: Shannon entropy (bits) of the code distribution at level l, and its ratio to log2(K_l)
  (1.0 = perfectly even use);
- cluster sizes: items per used code at level l (max, mean, max/mean);
- collision rate: 1 - (distinct SIDs / items), i.e. the share of items that must be told apart by
  something other than their codes (CollisionGenRec counts n - distinct: 875 for rkmeans_native);
- prefix purity at depth j against labels: items whose label is the majority label of their length-j
  prefix, over items with a label; `random_purity` is the same for a random assignment with the same
  group sizes (what purity a meaningless code would get).
"""
from __future__ import annotations

import numpy as np


def level_stats(codes: np.ndarray, sizes: list[int] | None = None) -> list[dict]:
    codes = np.asarray(codes)
    out = []
    for level in range(codes.shape[1]):
        k = int(sizes[level]) if sizes else int(codes[:, level].max()) + 1
        counts = np.bincount(codes[:, level], minlength=k)
        used = counts[counts > 0]
        p = used / used.sum()
        entropy = float(-(p * np.log2(p)).sum())
        out.append({
            "codebook_size": k, "used": int(len(used)), "utilization": len(used) / k,
            "entropy_bits": entropy, "entropy_ratio": entropy / np.log2(k) if k > 1 else 1.0,
            "max_size": int(used.max()), "mean_size": float(used.mean()),
            "max_over_mean": float(used.max() / used.mean()),
        })
    return out


def collisions(sids: np.ndarray) -> dict:
    _, counts = np.unique(np.asarray(sids), axis=0, return_counts=True)
    n = int(counts.sum())
    return {"items": n, "distinct_sids": int(len(counts)), "colliding_items": n - int(len(counts)),
            "collision_rate": 1 - len(counts) / n if n else 0.0, "max_items_per_sid": int(counts.max()) if n else 0}


def _prefix_ids(sids: np.ndarray, depth: int) -> np.ndarray:
    return np.unique(np.asarray(sids)[:, :depth], axis=0, return_inverse=True)[1].ravel()


def purity(groups: np.ndarray, labels) -> float:
    """Share of labelled items whose label is the majority label of their group."""
    labels = np.asarray(labels, dtype=object)
    keep = np.array([x is not None and x == x for x in labels])     # drop None / NaN labels
    if not keep.any():
        return float("nan")
    g = np.asarray(groups)[keep]
    _, lab = np.unique(labels[keep].astype(str), return_inverse=True)
    pair = g.astype(np.int64) * (lab.max() + 1) + lab
    uniq, counts = np.unique(pair, return_counts=True)
    best = np.zeros(g.max() + 1, dtype=np.int64)
    np.maximum.at(best, uniq // (lab.max() + 1), counts)
    return float(best.sum() / keep.sum())


def prefix_purity(sids: np.ndarray, labels, depth: int) -> float:
    return purity(_prefix_ids(sids, depth), labels)


def random_purity(sids: np.ndarray, labels, depth: int, repeats: int = 5, seed: int = 0) -> float:
    """Purity of the same prefix groups after shuffling the labels: the chance level."""
    rng = np.random.default_rng(seed)
    groups = _prefix_ids(sids, depth)
    labels = np.asarray(labels, dtype=object)
    return float(np.mean([purity(groups, labels[rng.permutation(len(labels))]) for _ in range(repeats)]))


def summary(sids: np.ndarray, sizes: list[int] | None = None) -> dict:
    """Flat metrics for MLflow: level{l}_{utilization,entropy_ratio,max_size,mean_size,max_over_mean}
    and collisions."""
    out = {}
    for level, st in enumerate(level_stats(sids, sizes)):
        for key in ("used", "utilization", "entropy_bits", "entropy_ratio", "max_size", "mean_size", "max_over_mean"):
            out[f"level{level}_{key}"] = st[key]
    out.update({k: v for k, v in collisions(sids).items() if k != "items"})
    return out


def plot_cluster_sizes(codes: np.ndarray, sizes: list[int] | None = None, title: str = ""):
    """Items per code at each level, codes sorted by size (a flat line = balanced)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stats = level_stats(codes, sizes)
    fig, ax = plt.subplots(figsize=(7, 4))
    for level in range(codes.shape[1]):
        k = stats[level]["codebook_size"]
        counts = np.sort(np.bincount(codes[:, level], minlength=k))[::-1]
        ax.plot(np.arange(1, k + 1), counts, label=f"level {level} (K={k}, used {stats[level]['used']})")
    ax.set_xscale("log")
    ax.set_yscale("symlog", linthresh=1)
    ax.set_xlabel("code rank")
    ax.set_ylabel("items per code")
    ax.set_title(title or "cluster sizes per level")
    ax.legend()
    fig.tight_layout()
    return fig
