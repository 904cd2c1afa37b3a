"""Collaborative fusion (OneRec-V1 item tokenization): items that the same users engage with should be close.

OneRec-V1 aligns its multimodal item representation with collaborative signal by a contrastive
item-to-item loss over high co-occurrence item pairs, and keeps the content by a caption
(reconstruction) loss. Here, on top of the content vectors of encoders.py:

  z = normalize(MLP(content))                       the fused vector (what gets tokenized)
  L = InfoNCE(z_a, z_b; in-batch negatives, tau)    over co-engaged pairs (a, b)
    + content_weight * ||decoder(z) - content||^2 / ||content||^2

Pairs come from impressions: a user's positive engagements (click/like/follow/comment/forward or a
long view, never a dislike) in time order; each is paired with the next `pair_window` positives of
the same user. Pair weight = count / (pop_a * pop_b)^alpha: popular items co-occur with everything,
so without this the loss mostly teaches "be close to the hits". Pairs are split once into train and
held-out; alignment = recall@10 of held-out co-engaged neighbours among the faiss k-NN of each item,
measured on the content vectors (before) and on the fused ones (after).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

ENGAGEMENTS = ("click", "like", "follow", "comment", "forward")


@dataclass
class FusionConfig:
    enabled: bool = True
    dim: int = 256                # fused vector size
    hidden: int = 512
    window_days: int = 7          # impressions of D and the days before mined for pairs
    pair_window: int = 5          # a positive is paired with this many next positives of the same user
    long_view: float = 0.8        # play_time / duration at or above this is a positive even without a click
    popularity_alpha: float = 0.5  # pair weight /= (pop_a * pop_b) ** alpha
    holdout: float = 0.1          # share of distinct pairs kept out of training to measure alignment
    temperature: float = 0.2
    content_weight: float = 1.0   # weight of the content-keeping reconstruction term
    steps: int = 500
    batch_size: int = 256
    lr: float = 1e-3
    min_pairs: int = 50           # fewer training pairs: the contrastive term is skipped (content term only)
    seed: int = 0
    progress: bool = True

    @classmethod
    def from_dict(cls, d: dict) -> "FusionConfig":
        return cls(**{k: v for k, v in (d or {}).items() if k in cls.__dataclass_fields__})


# -- co-engaged pairs ----------------------------------------------------------------------------
def positives(impressions: pd.DataFrame, long_view: float = 0.8) -> pd.DataFrame:
    """The positive engagements (user_id, item_id, ts) of an impressions frame."""
    imp = impressions
    pos = np.zeros(len(imp), dtype=bool)
    for flag in ENGAGEMENTS:
        if flag in imp:
            pos |= imp[flag].fillna(0).to_numpy() > 0
    if "play_time_ms" in imp and "duration_ms" in imp:
        play = pd.to_numeric(imp["play_time_ms"], errors="coerce").to_numpy(dtype=float)
        dur = pd.to_numeric(imp["duration_ms"], errors="coerce").to_numpy(dtype=float)
        with np.errstate(invalid="ignore", divide="ignore"):
            pos |= np.nan_to_num(play / dur, nan=0.0) >= long_view
    if "dislike" in imp:
        pos &= imp["dislike"].fillna(0).to_numpy() == 0
    return imp.loc[pos, ["user_id", "item_id", "ts"]].sort_values(["user_id", "ts"], kind="stable")


def mine_pairs(events: pd.DataFrame, pair_window: int = 5, alpha: float = 0.5) -> pd.DataFrame:
    """Distinct unordered pairs (a < b) of items co-engaged by a user: count, weight."""
    user, item = events["user_id"].to_numpy(), events["item_id"].to_numpy()
    a_all, b_all = [], []
    for off in range(1, pair_window + 1):
        same = user[off:] == user[:-off]
        a, b = item[:-off][same], item[off:][same]
        keep = a != b
        a_all.append(np.minimum(a, b)[keep])
        b_all.append(np.maximum(a, b)[keep])
    a, b = np.concatenate(a_all) if a_all else np.zeros(0, np.int64), np.concatenate(b_all) if b_all else np.zeros(0, np.int64)
    pairs = pd.DataFrame({"a": a, "b": b}).value_counts().rename("count").reset_index()
    pop = pd.Series(item).value_counts()
    pairs["weight"] = pairs["count"] / (pop.reindex(pairs["a"]).to_numpy() * pop.reindex(pairs["b"]).to_numpy()) ** alpha
    return pairs.sort_values(["a", "b"], kind="stable").reset_index(drop=True)


def split_pairs(pairs: pd.DataFrame, holdout: float, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    held = rng.random(len(pairs)) < holdout
    return pairs[~held].reset_index(drop=True), pairs[held].reset_index(drop=True)


def to_rows(pairs: pd.DataFrame, item_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs as row indices into the catalog (pairs with an item outside it are dropped)."""
    pos = pd.Series(np.arange(len(item_ids)), index=item_ids)
    a, b = pos.reindex(pairs["a"]).to_numpy(), pos.reindex(pairs["b"]).to_numpy()
    ok = ~(np.isnan(a) | np.isnan(b))
    return a[ok].astype(np.int64), b[ok].astype(np.int64), pairs["weight"].to_numpy()[ok]


# -- alignment -----------------------------------------------------------------------------------
def neighbour_recall(vectors: np.ndarray, a: np.ndarray, b: np.ndarray, k: int = 10) -> float:
    """Mean over items of |kNN_k(item) & co-engaged(item)| / min(k, |co-engaged(item)|), cosine k-NN."""
    import faiss

    if len(a) == 0:
        return float("nan")
    v = np.ascontiguousarray(vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12), dtype=np.float32)
    neighbours: dict[int, set] = {}
    for x, y in zip(np.r_[a, b].tolist(), np.r_[b, a].tolist()):
        neighbours.setdefault(x, set()).add(y)
    queries = np.array(sorted(neighbours))
    index = faiss.IndexFlatIP(v.shape[1])
    index.add(v)
    _, found = index.search(v[queries], min(k + 1, len(v)))
    recalls = []
    for q, row in zip(queries.tolist(), found):
        top = [j for j in row.tolist() if j != q and j >= 0][:k]
        truth = neighbours[q]
        recalls.append(len(truth.intersection(top)) / min(k, len(truth)))
    return float(np.mean(recalls))


# -- the projection ------------------------------------------------------------------------------
class FusionModel(nn.Module):
    def __init__(self, d_in: int, dim: int, hidden: int):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.decoder = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, d_in))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.encoder(x), dim=-1)


def info_nce(za: torch.Tensor, zb: torch.Tensor, ia: torch.Tensor, ib: torch.Tensor, tau: float) -> torch.Tensor:
    """Symmetric InfoNCE with in-batch negatives; a negative that is the same item as the positive
    (popular items repeat within a batch) is masked instead of pushed away."""
    logits = za @ zb.T / tau
    same = (ib[None, :] == ib[:, None]) | (ib[None, :] == ia[:, None])
    eye = torch.eye(len(za), dtype=torch.bool)
    logits = logits.masked_fill(same & ~eye, float("-inf"))
    target = torch.arange(len(za))
    logits_t = (zb @ za.T / tau).masked_fill(((ia[None, :] == ia[:, None]) | (ia[None, :] == ib[:, None])) & ~eye,
                                            float("-inf"))
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits_t, target)) / 2


def content_loss(model: FusionModel, x: torch.Tensor) -> torch.Tensor:
    recon = model.decoder(model(x))
    return ((recon - x) ** 2).sum(1).div((x ** 2).sum(1).clamp_min(1e-8)).mean()


def train(content: np.ndarray, a: np.ndarray, b: np.ndarray, weight: np.ndarray, cfg: FusionConfig) -> tuple[FusionModel, dict]:
    """Fit the projection on catalog content vectors and co-engaged row pairs (a, b, weight)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # a small MLP: a second thread saves little and spins badly on a busy machine
    try:
        return _train(content, a, b, weight, cfg)
    finally:
        torch.set_num_threads(threads)


def _train(content, a, b, weight, cfg: FusionConfig):
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    x = torch.from_numpy(np.ascontiguousarray(content, dtype=np.float32))
    model = FusionModel(x.shape[1], cfg.dim, cfg.hidden)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=max(1, cfg.steps), pct_start=0.1)
    contrastive = len(a) >= cfg.min_pairs
    cdf = np.cumsum(weight / weight.sum()) if contrastive else None   # pairs sampled in proportion to weight
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    history = {"nce": [], "content": []}
    for _ in tqdm(range(cfg.steps), desc="fusion", disable=not cfg.progress, leave=False):
        rows = torch.from_numpy(rng.integers(0, len(x), cfg.batch_size))
        loss_content = content_loss(model, x[rows])
        loss = cfg.content_weight * loss_content
        if contrastive:
            pick = torch.from_numpy(np.minimum(np.searchsorted(cdf, rng.random(cfg.batch_size)), len(cdf) - 1))
            ia, ib = ta[pick], tb[pick]
            loss_nce = info_nce(model(x[ia]), model(x[ib]), ia, ib, cfg.temperature)
            loss = loss + loss_nce
            history["nce"].append(loss_nce.item())
        history["content"].append(loss_content.item())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    return model, {"contrastive": contrastive, "final_nce": float(np.mean(history["nce"][-20:])) if history["nce"] else None,
                   "final_content": float(np.mean(history["content"][-20:])), "history": history}


@torch.no_grad()
def apply(model: FusionModel, content: np.ndarray, batch: int = 65536) -> np.ndarray:
    x = torch.from_numpy(np.ascontiguousarray(content, dtype=np.float32))
    return torch.cat([model(x[i:i + batch]) for i in range(0, len(x), batch)]).numpy()


def save(model: FusionModel, metadata: dict) -> bytes:
    from safetensors.torch import save as st_save

    return st_save({k: v.contiguous() for k, v in model.state_dict().items()}, metadata=metadata)


def load(data: bytes) -> tuple[FusionModel, dict]:
    from safetensors.torch import load as st_load

    from onerec.item.vectors import safetensors_metadata

    state = st_load(data)
    d_in, hidden, dim = state["encoder.0.weight"].shape[1], state["encoder.0.weight"].shape[0], state["encoder.2.weight"].shape[0]
    model = FusionModel(d_in, dim, hidden)
    model.load_state_dict(state)
    model.eval()
    return model, safetensors_metadata(data)
