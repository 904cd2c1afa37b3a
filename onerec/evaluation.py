"""Offline evaluation: ranking metrics with full ranking through trie-constrained beam search.

Protocols (how contexts and ground truth come out of the features stage's samples, one row per impression
with its context as of that impression):
  leave_one_out  the last (positive) sample of each user is the target, its context the history before it
                 (TIGER's Amazon protocol; truth = that one item);
  next_day       the context of each user's first impression of day D (so: history strictly before D) and
                 truth = every item the user engaged with positively on D (KuaiRand, synthetic).
Metrics, binary relevance, averaged over users, K in `ks`:
  recall@K = |top-K & truth| / |truth|;  hr@K = [top-K & truth != {}];
  ndcg@K   = sum_{rank i < K, hit} 1/log2(i+2) / sum_{i < min(|truth|, K)} 1/log2(i+2).
Slate-level (OneRec-V2 Table 9 reports the last two online; these are their offline proxies):
  coverage@K        distinct recommended items / catalog items (items with an SID);
  cold_share@K      share of recommended slots filled by cold-start items (given by the caller);
  cluster_density@K mean over users of the share of item pairs in the slate that share the first SID level
                    (the coarsest semantic cluster): 1 = one cluster only. The paper does not define it; this
                    is our proxy, documented so it stays comparable over time.
Metric names use `_at_K` (MLflow metric names cannot hold '@').
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

KS = (1, 5, 10, 50)


# -- metrics -----------------------------------------------------------------------------------------------
def ranking_metrics(ranked: list[list[int]], truths: list[set[int]], ks=KS) -> dict:
    """Recall/HR/NDCG@K averaged over users (users with empty truth must be dropped by the caller)."""
    if len(ranked) != len(truths):
        raise ValueError("one ranked list per ground-truth set")
    out = {}
    discount = 1.0 / np.log2(np.arange(max(ks)) + 2)
    for k in ks:
        rec, hr, ndcg = [], [], []
        for items, truth in zip(ranked, truths):
            hits = np.array([i in truth for i in items[:k]], dtype=bool)
            rec.append(hits.sum() / len(truth))
            hr.append(float(hits.any()))
            ideal = discount[: min(len(truth), k)].sum()
            ndcg.append(discount[: len(hits)][hits].sum() / ideal)
        n = max(len(ranked), 1)
        out[f"recall_at_{k}"] = float(np.sum(rec) / n)
        out[f"hr_at_{k}"] = float(np.sum(hr) / n)
        out[f"ndcg_at_{k}"] = float(np.sum(ndcg) / n)
    return out


def coverage(ranked: list[list[int]], catalog_size: int, k: int) -> float:
    seen = {i for items in ranked for i in items[:k]}
    return len(seen) / max(catalog_size, 1)


def cold_share(ranked: list[list[int]], cold_items: set[int], k: int) -> float:
    slots = [i for items in ranked for i in items[:k]]
    return sum(i in cold_items for i in slots) / max(len(slots), 1)


def cluster_density(first_levels: list[list[int]], k: int) -> float:
    """Mean share of same-cluster pairs per slate (slates of fewer than 2 items are skipped)."""
    shares = []
    for codes in first_levels:
        codes = np.asarray(codes[:k])
        if len(codes) < 2:
            continue
        counts = np.unique(codes, return_counts=True)[1]
        shares.append((counts * (counts - 1)).sum() / (len(codes) * (len(codes) - 1)))
    return float(np.mean(shares)) if shares else 0.0


def slate_metrics(ranked, first_levels, catalog_size: int, cold_items: set[int], ks=KS) -> dict:
    out = {}
    for k in ks:
        out[f"coverage_at_{k}"] = coverage(ranked, catalog_size, k)
        out[f"cold_share_at_{k}"] = cold_share(ranked, cold_items, k)
        out[f"cluster_density_at_{k}"] = cluster_density(first_levels, k)
    return out


# -- protocols -----------------------------------------------------------------------------------------------
def positive_mask(table: pa.Table) -> np.ndarray:
    """Positive feedback, as the pretrain stage defines it: like, follow, or at least 80% watched."""
    def flag(name):
        return pc.fill_null(table[name], 0).to_numpy(zero_copy_only=False) > 0 if name in table.column_names \
            else np.zeros(table.num_rows, bool)
    play = pc.fill_null(table["play_time_ms"], 0).to_numpy(zero_copy_only=False).astype(np.float64)
    dur = np.maximum(pc.fill_null(table["duration_ms"], 0).to_numpy(zero_copy_only=False).astype(np.float64), 1.0)
    return flag("like") | flag("follow") | (play / dur >= 0.8)


def _by_user(table: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    users = table["user_id"].to_numpy(zero_copy_only=False)
    order = np.lexsort((table["ts"].to_numpy(zero_copy_only=False), users))
    u = users[order]
    first = np.r_[True, u[1:] != u[:-1]]
    return order, u, first


def next_day(samples: pa.Table, targets: str = "positive") -> tuple[pa.Table, list[set[int]]]:
    """One request per user of the day: its first sample's context, truth = its (positive) items of the day."""
    order, users, first = _by_user(samples)
    keep = positive_mask(samples)[order] if targets == "positive" else np.ones(len(order), bool)
    items = samples["item_id"].to_numpy(zero_copy_only=False)[order]
    group = np.cumsum(first) - 1
    truths = [set() for _ in range(int(first.sum()))]
    for g, item in zip(group[keep], items[keep]):
        truths[g].add(int(item))
    has = np.array([bool(t) for t in truths], dtype=bool)
    rows = order[first][has]
    return samples.take(pa.array(rows)), [t for t, h in zip(truths, has) if h]


def leave_one_out(samples: pa.Table, targets: str = "positive") -> tuple[pa.Table, list[set[int]]]:
    """One request per user: the last (positive) sample is held out; its context is everything before it."""
    if targets == "positive":
        samples = samples.filter(pa.array(positive_mask(samples)))
    order, users, first = _by_user(samples)
    last = np.r_[first[1:], True]
    rows = order[last]
    items = samples["item_id"].to_numpy(zero_copy_only=False)[rows]
    return samples.take(pa.array(rows)), [{int(i)} for i in items]


# -- the harness ---------------------------------------------------------------------------------------------
@dataclass
class Ranking:
    items: list[list[int]]          # per request, ranked item ids
    first_levels: list[list[int]]   # the first SID token of each of those items
    gen_probs: list[list[float]]
    invalid_rate: float = 0.0       # constrained beam search: share of generated SIDs no item has (must be 0)
    invalid_rate_free: float | None = None   # the same model decoding without the trie


def invalid_share(trie, sids: np.ndarray) -> float:
    """Share of (n, L) SIDs that are not a path of the trie (L may be shorter than the trie)."""
    nodes = np.zeros(len(sids), dtype=np.int64)
    for depth in range(sids.shape[1]):
        nodes = trie.step(depth, nodes, sids[:, depth])
    return float((nodes < 0).mean()) if len(sids) else 0.0


def rank(model, trie, sids, contexts: pa.Table, n: int, beam_size: int, batch_size: int = 64,
         check_unconstrained: bool = False) -> Ranking:
    """Full ranking of the catalog for every context row through constrained beam search."""
    from onerec import decoding
    from onerec.samples import collate

    model.eval()
    out = Ranking([], [], [])
    generated, free = [], []
    for start in range(0, contexts.num_rows, batch_size):
        batch = collate(contexts.slice(start, batch_size), model.cfg, sids)
        gen = decoding.beam_search(model, batch, trie, min(max(n, beam_size), decoding.MAX_BEAM))
        generated.append(gen.sids[gen.nodes >= 0])
        for recs in decoding.resolve(trie, gen, n):
            out.items.append([r.item_id for r in recs])
            out.first_levels.append([r.sid[0] for r in recs])
            out.gen_probs.append([r.gen_prob for r in recs])
        if check_unconstrained:   # a narrower beam: this is a diagnostic of the model, not a ranking
            sids_free = decoding.beam_search_unconstrained(model, batch, min(beam_size, 64))
            free.append(sids_free.reshape(-1, sids_free.shape[2]))
    if generated:
        out.invalid_rate = invalid_share(trie, np.concatenate(generated))
    if free:
        out.invalid_rate_free = invalid_share(trie, np.concatenate(free))
    return out


def evaluate(model, trie, sids, contexts: pa.Table, truths: list[set[int]], *, ks=KS, beam_size: int = 64,
             cold_items=frozenset(), batch_size: int = 64, check_unconstrained: bool = True) -> dict:
    """All offline metrics of one model on given contexts/targets (what a benchmark or the stage calls)."""
    ranking = rank(model, trie, sids, contexts, max(ks), beam_size, batch_size, check_unconstrained)
    metrics = {**ranking_metrics(ranking.items, truths, ks),
               **slate_metrics(ranking.items, ranking.first_levels, len(trie.items), set(cold_items), ks),
               "users": len(truths), "invalid_rate": ranking.invalid_rate}
    if ranking.invalid_rate_free is not None:
        metrics["invalid_rate_unconstrained"] = ranking.invalid_rate_free
    return metrics
