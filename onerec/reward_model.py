"""The OneRec-V1 reward model: multi-task predictions for (user context, item), fused into a P-score.

Tasks: the duration-aware watch-time percentile q (features stage, V2 Sec. 3.1.1) and the like, follow,
comment, forward and dislike flags. The user side reuses the generative model's context embedding (the same
samples, the same collate); the item side is its hashed id + semantic-ID embeddings, so any item the policy
can generate, including one never exposed, can be scored. The item attends over the context (V1's
"target-aware" representation), then a shared MLP feeds one logit per task.
    P-score = sum_k w_k * sigmoid(logit_k)     (dislike gets a negative weight)
q is learned as a soft label (BCE against q in [0, 1]); samples with a null q (no peer group) do not train it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
import torch.nn as nn
import torch.nn.functional as F

from onerec.model import Batch, ContextEmbedding, ModelConfig
from onerec.samples import SidTable, _hash_bucket, collate

TASKS = ("q", "like", "follow", "comment", "forward", "dislike")   # scored: the P-score's inputs
AUX_TASKS = ("click", "watch")   # trained, never scored: dense labels that every exposure carries (below)
# RewardConfig fields a model saved before they existed was built with (RewardConfig.from_dict)
LEGACY = {"aux_tasks": (), "item_bias": False}


@dataclass
class RewardConfig:
    d_model: int = 64                # width of the context/item vectors
    hidden: int = 128                # shared MLP tower
    weights: dict = field(default_factory=lambda: {   # P-score fusion weights, one per task
        "q": 1.0, "like": 0.5, "follow": 0.5, "comment": 0.3, "forward": 0.3, "dislike": -1.0})
    q_positive: float = 0.75         # AUC of the q task: is q above this (a top-quartile watch)?
    # Auxiliary tasks on the shared tower (V1 fuses clicks and watch time into its P-score): click, and watch =
    # min(play / duration, 1) as a soft label. Likes are 6% of exposures and q is null on a user's first video of
    # a duration bucket, so alone they give an item's embedding a few gradients a day; every exposure has a click
    # flag and a watched fraction, and both rise with the affinity the rare flags are drawn from.
    aux_tasks: tuple = AUX_TASKS
    item_bias: bool = True           # a per-task logit bias per hashed item, added after the tower (the "wide" part)

    @classmethod
    def from_dict(cls, d: dict) -> "RewardConfig":
        """A saved reward_config: fields it predates get the values such a model was built with."""
        return cls(**{**LEGACY, **d})

    def __post_init__(self):
        self.aux_tasks = tuple(self.aux_tasks)
        if set(self.aux_tasks) - set(AUX_TASKS):
            raise ValueError(f"reward aux_tasks must be among {AUX_TASKS}, got {list(self.aux_tasks)}")
        unknown = set(self.weights) - set(TASKS)
        if unknown:
            raise ValueError(f"reward weights for unknown task(s) {sorted(unknown)}; known: {TASKS}")


@dataclass
class RMBatch:
    """A context batch, the scored items and (training) the labels."""
    batch: Batch
    item: torch.Tensor               # (B,) hashed item ids
    sid: torch.Tensor                # (B, L) semantic IDs
    labels: torch.Tensor | None = None   # (B, len(TASKS)), NaN = unknown

    def to(self, device):
        return RMBatch(self.batch.to(device), self.item.to(device), self.sid.to(device),
                       None if self.labels is None else self.labels.to(device))


class RewardModel(nn.Module):
    def __init__(self, context_cfg: ModelConfig, cfg: RewardConfig):
        super().__init__()
        self.context_cfg, self.cfg = context_cfg, cfg
        d = cfg.d_model
        self.context = ContextEmbedding(context_cfg, d)
        self.item = nn.Embedding(context_cfg.item_buckets, d, padding_idx=0)
        self.sid = nn.ModuleList(nn.Embedding(n, d) for n in context_cfg.codebook_sizes)
        self.tower = nn.Sequential(nn.Linear(4 * d, cfg.hidden), nn.SiLU(), nn.Linear(cfg.hidden, cfg.hidden), nn.SiLU())
        self.heads = nn.Linear(cfg.hidden, len(TASKS))
        if cfg.aux_tasks:
            self.aux_heads = nn.Linear(cfg.hidden, len(cfg.aux_tasks))
        if cfg.item_bias:   # zero-initialised: an unseen item starts at the tower's prediction
            self.bias = nn.Embedding(context_cfg.item_buckets, len(TASKS) + len(cfg.aux_tasks))
            nn.init.zeros_(self.bias.weight)

    def forward(self, b: RMBatch) -> torch.Tensor:
        """(B, len(TASKS)) logits of the scored tasks (the auxiliary heads are not computed)."""
        out = self.heads(self.hidden(b))
        return out + self.bias(b.item)[:, :len(TASKS)] if self.cfg.item_bias else out

    def train_logits(self, b: RMBatch) -> torch.Tensor:
        """(B, len(TASKS) + len(aux_tasks)) logits: the scored tasks, then the auxiliary ones."""
        h = self.hidden(b)
        out = torch.cat([self.heads(h), self.aux_heads(h)], dim=-1) if self.cfg.aux_tasks else self.heads(h)
        return out + self.bias(b.item) if self.cfg.item_bias else out

    def hidden(self, b: RMBatch) -> torch.Tensor:
        ctx, mask = self.context(b.batch)                                  # (B, S, d), (B, S)
        sid = b.sid.clamp(min=0)
        item = self.item(b.item) + sum(emb(sid[:, i].clamp(max=emb.num_embeddings - 1)) for i, emb in enumerate(self.sid))
        att = (ctx @ item[:, :, None])[..., 0] / ctx.shape[-1] ** 0.5     # target-aware attention over the context
        att = torch.softmax(att.masked_fill(~mask, -1e9), dim=1)
        target_aware = (att[..., None] * ctx).sum(1)
        pooled = (ctx * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        return self.tower(torch.cat([pooled, target_aware, item, pooled * item], dim=-1))

    def p_score(self, b: RMBatch) -> torch.Tensor:
        probs = torch.sigmoid(self(b))
        w = torch.tensor([self.cfg.weights.get(t, 0.0) for t in TASKS], dtype=probs.dtype, device=probs.device)
        return probs @ w

    def meta(self) -> dict:
        return {"context_config": asdict(self.context_cfg), "reward_config": asdict(self.cfg), "tasks": list(TASKS)}


def loss_fn(logits: torch.Tensor, labels: torch.Tensor, tasks=TASKS) -> tuple[torch.Tensor, dict]:
    """Mean over tasks (the columns, named by `tasks`) of the BCE over the samples where the label is known."""
    known = torch.isfinite(labels)
    per = F.binary_cross_entropy_with_logits(logits, torch.nan_to_num(labels), reduction="none") * known
    task = per.sum(0) / known.sum(0).clamp(min=1)
    return task.mean(), {f"loss_{t}": float(v) for t, v in zip(tasks, task.detach())}


# ---------------------------------------------------------------------------------------------------------
# data

def labels(table: pa.Table, aux_tasks=()) -> np.ndarray:
    """(rows, len(TASKS) + len(aux_tasks)) labels; NaN = unknown (q without a peer group, watch without a duration)."""
    def col(name):
        return pc.cast(table[name], pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64)

    out = [col("q")]   # null -> NaN: not trained
    for t in TASKS[1:] + tuple(a for a in aux_tasks if a != "watch"):
        out.append(np.nan_to_num(col(t), nan=0.0).clip(0, 1))
    if "watch" in aux_tasks:
        dur = col("duration_ms")
        with np.errstate(divide="ignore", invalid="ignore"):
            out.insert(len(TASKS) + list(aux_tasks).index("watch"),
                       np.where(dur > 0, np.clip(col("play_time_ms") / dur, 0, 1), np.nan))
    return np.stack(out, axis=1).astype(np.float32)


def rm_batch(table: pa.Table, context_cfg: ModelConfig, sids: SidTable, items: np.ndarray | None = None,
             with_labels: bool = True, aux_tasks=()) -> RMBatch:
    """Samples rows (their context) and the items to score: the impressed items unless `items` is given."""
    items = table["item_id"].to_numpy() if items is None else np.asarray(items, dtype=np.int64)
    batch = collate(table, context_cfg, sids)
    batch.target = None
    sid = np.minimum(sids.lookup(items)[:, :len(context_cfg.codebook_sizes)], np.array(context_cfg.codebook_sizes) - 1)
    return RMBatch(batch, torch.from_numpy(_hash_bucket(items, context_cfg.item_buckets).astype(np.int64)),
                   torch.from_numpy(sid.astype(np.int64)),
                   torch.from_numpy(labels(table, aux_tasks)) if with_labels else None)


# ---------------------------------------------------------------------------------------------------------
# metrics

def auc(y: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC by the rank statistic (ties get average ranks); NaN when a class is missing."""
    y = np.asarray(y, bool)
    n_pos, n_neg = y.sum(), (~y).sum()
    if not n_pos or not n_neg:
        return float("nan")
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score))
    sorted_s = np.asarray(score)[order]
    # average ranks over ties
    _, first, counts = np.unique(sorted_s, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def train(model: RewardModel, table: pa.Table, sids: SidTable, *, steps: int, batch_size: int = 256, lr: float = 1e-3,
          weight_decay: float = 0.01, embedding_lr: float | None = None, seed: int = 0, on_step=None) -> list[float]:
    """AdamW on uniformly drawn batches of `table` (without replacement within a batch); the loss per step.
    `embedding_lr` (None = lr) is the rate of the embedding tables. Why: a table row moves only on the steps whose
    batch holds its item, a few dozen times a day for an item shown ~5 times, so at the tower's rate an item's
    bias and vector stay near their start however many days it is seen.
    `on_step(step, loss, grad_norm, per_task)` is called after every step (the stage logs to MLflow there)."""
    tables = [m.weight for m in model.modules() if isinstance(m, nn.Embedding)]
    ids = {id(t) for t in tables}
    rest = [p for p in model.parameters() if id(p) not in ids]
    opt = torch.optim.AdamW([{"params": rest}, {"params": tables, "lr": lr if embedding_lr is None else embedding_lr}],
                            lr=lr, weight_decay=weight_decay)
    rng = np.random.default_rng(seed)
    model.train()
    losses = []
    for step in range(1, steps + 1):
        rows = rng.choice(table.num_rows, min(batch_size, table.num_rows), replace=False)
        b = rm_batch(table.take(pa.array(rows)), model.context_cfg, sids, aux_tasks=model.cfg.aux_tasks)
        loss, per_task = loss_fn(model.train_logits(b), b.labels, TASKS + model.cfg.aux_tasks)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if on_step is not None:
            on_step(step, losses[-1], float(grad_norm), per_task)
    return losses


@torch.no_grad()
def evaluate(model: RewardModel, table: pa.Table, sids: SidTable, batch_size: int = 512) -> dict:
    """Per-task AUC and log-loss on the rows of `table` (q: AUC of q > q_positive, log-loss against q)."""
    model.eval()
    logits, labs = [], []
    for s in range(0, table.num_rows, batch_size):
        b = rm_batch(table.slice(s, batch_size), model.context_cfg, sids)
        logits.append(model(b).float().numpy())
        labs.append(b.labels.numpy())
    if not logits:
        return {}
    lg, lb = np.concatenate(logits), np.concatenate(labs)
    p = 1 / (1 + np.exp(-lg))
    out = {}
    for i, t in enumerate(TASKS):
        known = np.isfinite(lb[:, i])
        y, pi = lb[known, i], np.clip(p[known, i], 1e-7, 1 - 1e-7)
        if not len(y):
            continue
        out[f"logloss_{t}"] = float(-(y * np.log(pi) + (1 - y) * np.log(1 - pi)).mean())
        target = y > model.cfg.q_positive if t == "q" else y > 0.5
        out[f"auc_{t}"] = auc(target, pi)
        out[f"positive_rate_{t}"] = float(target.mean())
    return out
