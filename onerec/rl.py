"""Post-training math: duration-aware reward shaping (OneRec-V2 Sec. 3.1.1) and the policy losses
GBPO (V2 Eqs. 11-12), ECPO (V2 Eqs. 13-14, OneRec-V1), GRPO/PPO ratio clipping, and DPO (OneRec's
iterative preference alignment), plus the objective that mixes them with the generation loss.

The action o_i is a whole item: its semantic ID, then one of the items sharing that SID uniformly (the
sharing rule of onerec.decoding), so
    pi_theta(o|u) = P_theta(SID | u) / n_items(SID),
the same quantity the server logs as `gen_prob`; that makes the served probability a valid pi_old.
Two ratio levels (`RLConfig.ratio`):
  sequence: the ratio of that whole-item probability. It is tiny (1e-4 .. 1e-8), so GBPO's bound
    1 / max(pi, 1 - pi) ~ 1 and a negative's gradient pi * grad log pi all but vanishes;
  token: one ratio per SID level, pi_l = P_theta(s_l | u, s_<l), as V2's gradient analysis treats the policy
    (each level is a softmax whose probabilities are not small, so the bounded negative gradient acts).
    A logged gen_prob becomes per-level pi_old by spreading its log-ratio evenly over the levels.

Every loss takes log pi_theta (with gradient), pi_old (NaN where unknown: a legacy/random exposure, then
pi_old = sg(pi_theta) as the V2 paper prescribes) and advantages A, and averages over the samples that
carry a signal (A != 0): the scale then does not depend on how many samples the shaping filtered, and a
batch with no positive and no negative is an exact no-op (loss 0, zero gradient, never NaN).
posttrain scales that mean by RLConfig.loss_norm: by default (batch) x the batch's share of samples with
a signal, so the RL term weighs in the batch as many samples as carry a signal (see loss_norm).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

ALGORITHMS = ("gbpo", "ecpo", "grpo", "dpo")
SOURCES = ("beam", "feedback", "reward_model", "hybrid")
RATIOS = ("token", "sequence")


@dataclass
class RLConfig:
    algorithm: str = "gbpo"          # gbpo (V2) | ecpo (V1) | grpo (PPO ratio clipping) | dpo (IPA: chosen vs rejected)
    # beam: per logged duration-aware positive (or dislike), a group of `group_size` distinct valid items from
    #   trie-constrained beam search with the logged item injected, rank-aware rewards (MiniOneRec / ReRe);
    # feedback: the logged exposures themselves as actions | reward_model: sampled rollouts scored by the
    #   reward model | hybrid: feedback + reward_model
    source: str = "beam"
    ratio: str = "token"             # token: one ratio per SID level (V2's analysis) | sequence: P(SID) / n_items
    top_quantile: float = 0.25       # tau_B: positives are q above the batch's top-25% quantile (Sec. 3.1.1)
    ties: str = "rank"               # q tied at tau_B: rank (top 25% by q, then play time) | strict (q > tau_B only)
    clip_eps: float = 0.2            # epsilon of ECPO / GRPO clipping
    ecpo_delta: float = 0.1          # delta of ECPO's early clip, Eq. 14
    gen_loss_weight: float = 1.0     # generation (NTP) loss mixed in to stay near the SFT model
    rl_weight: float = 1.0           # weight of the feedback RL loss
    rollout_weight: float = 1.0      # weight of the rollout (reward-model) RL loss
    rollout_users: int = 16          # samples of each batch that get a group (beam: logged positives/dislikes first)
    group_size: int = 16             # G members per group (advantage = reward normalised within the group)
    rank_penalty: float = 1.0        # beam: the non-target members share this negative reward, by 1 / log2(rank + 2)
    # How the feedback/beam RL loss is scaled in a batch of B logged samples. batch: sum over the samples (a beam
    #   group counts as one) / B, the PPO/GRPO convention: A = 0 samples count as zeros, so a batch with few
    #   signals moves the policy little. signal: mean over the samples with A != 0 only; on KuaiRand ~5% of the rows
    #   carry a signal (q is null without a peer group), so 3 samples then outweigh the batch's 64-sample NLL ~20x
    #   and RL loses a third of Recall@10 (benchmarks/results/README.md#post-training).
    loss_norm: str = "batch"
    kl_weight: float = 0.1           # + exact per-level KL(pi || reference) on the logged samples: the SFT anchor
    select_every: int = 0            # checkpoint selection: score held-out rows every N steps, keep the best (0 = off)
    validation_share: float = 0.1    # ...the newest 10% of the RL samples (by time) are held out for it
    validation_rows: int = 256       # ...at most this many of them are scored (beam search, top 10)
    temperature: float = 1.0         # rollout sampling temperature
    dpo_beta: float = 0.1            # DPO temperature
    dpo_candidates: int = 16         # beam width whose best/worst (by P-score) form the preference pair
    format_samples: int = 0          # unconstrained samples per rollout user for the format reward (0 = off)
    format_reward: float = 1.0       # advantage of an unconstrained sample whose SID maps to items
    format_penalty: float = 0.0      # advantage of one that does not (V1 drops them: 0)
    cold_start_bonus: float = 0.0    # business reward: added for items first seen within cold_start_days
    cold_start_days: int = 1
    business_reward: str | None = None   # "module:function"(item_ids, first_seen_ms, now_ms) -> bonus per item
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"rl.algorithm must be one of {ALGORITHMS}, got {self.algorithm!r}")
        if self.source not in SOURCES:
            raise ValueError(f"rl.source must be one of {SOURCES}, got {self.source!r}")
        if self.ratio not in RATIOS:
            raise ValueError(f"rl.ratio must be one of {RATIOS}, got {self.ratio!r}")
        if self.loss_norm not in ("batch", "signal"):
            raise ValueError(f"rl.loss_norm must be 'batch' or 'signal', got {self.loss_norm!r}")
        if self.ties not in ("rank", "strict"):
            raise ValueError(f"rl.ties must be 'rank' or 'strict', got {self.ties!r}")
        if not 0 < self.top_quantile < 1:
            raise ValueError(f"rl.top_quantile must be in (0, 1), got {self.top_quantile}")
        if self.group_size < 1 or self.rollout_users < 0 or self.ecpo_delta <= 0 or self.clip_eps <= 0:
            raise ValueError("rl: need group_size >= 1, rollout_users >= 0, ecpo_delta > 0, clip_eps > 0")
        if self.source == "beam" and self.group_size < 2:
            raise ValueError("rl.source=beam needs group_size >= 2 (the logged item and at least one competitor)")
        if self.select_every < 0 or not 0 < self.validation_share < 1 or self.validation_rows < 1:
            raise ValueError("rl: need select_every >= 0, 0 < validation_share < 1, validation_rows >= 1")

    @property
    def needs_reward_model(self) -> bool:
        """Rollouts scored by the reward model (sources reward_model / hybrid), or DPO pairs ranked by it."""
        return self.source in ("reward_model", "hybrid") or (self.algorithm == "dpo" and self.source != "beam")


# ---------------------------------------------------------------------------------------------------------
# duration-aware reward shaping (Sec. 3.1.1)

def batch_threshold(q: np.ndarray, top: float = 0.25) -> float:
    """tau_B: sort the batch's q descending; tau_B is the value at rank floor(top * n), so that `q > tau_B`
    keeps at most the top `top` share (exactly that share when q has no ties). Null q (no peer group) does not
    take part. No valid q: +inf (nothing is positive)."""
    q = np.asarray(q, dtype=np.float64)
    q = np.sort(q[np.isfinite(q)])[::-1]
    if not len(q):
        return math.inf
    return float(q[min(int(math.floor(top * len(q))), len(q) - 1)])


def shape_advantages(q, dislike, top: float = 0.25, ties: str = "strict", tiebreak=None) -> tuple[np.ndarray, float]:
    """A_i = +1 if q_i > tau_B and no dislike; -1 on a dislike; 0 otherwise (filtered). Returns (A, tau_B).
    Null q is never positive and takes no part in tau_B.

    ties="strict": the formula as printed, so samples tied at tau_B are not positive. With short histories q = 1
      ("watched at least as long as every earlier video of that length") is a large tie: 29-52% of the valid q
      of our debug and KuaiRand days, so tau_B = 1 and no sample at all is positive.
    ties="rank": the paper's stated intent ("the top 25% ... after sorting in descending order"): the first
      floor(top * n) samples by q, ties broken by `tiebreak` (e.g. play time: the longer watch) then by
      position. Identical to "strict" whenever no tie straddles tau_B."""
    q = np.asarray(q, dtype=np.float64)
    neg = np.asarray(dislike, dtype=np.float64) > 0
    tau = batch_threshold(q, top)
    valid = np.isfinite(q)
    if ties == "strict":
        with np.errstate(invalid="ignore"):
            pos = valid & (q > tau)
    elif ties == "rank":
        idx = np.nonzero(valid)[0]
        tb = np.zeros(len(q)) if tiebreak is None else np.nan_to_num(np.asarray(tiebreak, dtype=np.float64))
        order = idx[np.lexsort((idx, -tb[idx], -q[idx]))]      # q desc, tiebreak desc, position asc
        pos = np.zeros(len(q), bool)
        pos[order[:int(math.floor(top * len(idx)))]] = True
    else:
        raise ValueError(f"ties must be 'strict' or 'rank', got {ties!r}")
    adv = np.where(neg, -1.0, np.where(pos & ~neg, 1.0, 0.0))
    return adv, tau


def beam_rewards(target_slot: np.ndarray, valid: np.ndarray, target_reward: np.ndarray,
                 rank_penalty: float = 1.0) -> np.ndarray:
    """(U, G) rewards of beam groups: the logged item's slot gets its logged reward (+1 duration-aware positive,
    -1 dislike, plus business bonus); after a positive, the other members (beam order = rank) share
    -rank_penalty in proportion to 1 / log2(rank + 2), so the competitors ranked above the logged positive are
    pushed down hardest (MiniOneRec's rank-aware reward); after a dislike they get 0. Padding slots: NaN."""
    U, G = valid.shape
    w = 1.0 / np.log2(np.arange(G) + 2.0)
    others = valid & (np.arange(G)[None] != target_slot[:, None])
    share = np.where(others, w[None], 0.0)
    share = share / np.maximum(share.sum(1, keepdims=True), 1e-12)
    r = np.where(np.asarray(target_reward)[:, None] > 0, -rank_penalty * share, 0.0)
    r[np.arange(U), target_slot] = target_reward
    return np.where(valid, r, np.nan)


def group_advantages(rewards: np.ndarray) -> np.ndarray:
    """(users, G) rollout rewards -> GRPO/ECPO advantages (r - mean) / std within each user's group;
    a group with equal rewards carries no preference: 0. NaN rewards (padding) take no part and get 0."""
    r = np.asarray(rewards, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        mean = np.nanmean(np.where(np.isfinite(r), r, np.nan), axis=1, keepdims=True) if r.size else r
        std = np.nanstd(np.where(np.isfinite(r), r, np.nan), axis=1, keepdims=True) if r.size else r
    adv = np.where(std > 1e-8, (r - mean) / np.maximum(std, 1e-8), 0.0)
    return np.where(np.isfinite(r), adv, 0.0)


# ---------------------------------------------------------------------------------------------------------
# policy losses; logp = log pi_theta(o|u) (grad), old_p = pi_old (no grad, NaN = unknown), adv = A.
# Sequence level: all three (N,). Token level: logp and old_p (N, L) (one entry per SID level), adv (N,) shared
# by the levels of a sample; the loss is then the mean over the levels of the samples that carry a signal.

def _old(logp: torch.Tensor, old_p: torch.Tensor) -> torch.Tensor:
    """pi_old, with sg(pi_theta) where the exposure did not come from our model (V2, 'Gradient Analysis')."""
    p = logp.detach().exp()
    return torch.where(torch.isfinite(old_p) & (old_p > 0), old_p.to(p.dtype), p)


def _mean_over_signal(per_sample: torch.Tensor, adv: torch.Tensor) -> torch.Tensor:
    keep = (adv != 0).to(per_sample.dtype).expand_as(per_sample)
    return (per_sample * keep).sum() / keep.sum().clamp(min=1.0)


def gbpo_loss(logp, old_p, adv):
    """Eqs. 11-12: ratio pi / pi'_old with pi'_old = max(pi_old, sg(pi)) for A >= 0 and max(pi_old, 1 - sg(pi))
    for A < 0. No clipping, so no sample loses its gradient; for a negative with pi_old = sg(pi) the
    gradient w.r.t. pi is 1 / max(pi, 1 - pi) <= 2: the BCE gradient of Eq. 18 (y = 0), bounded as pi -> 0."""
    pi = logp.exp()
    sg, old = pi.detach(), _old(logp, old_p)
    denom = torch.where(adv >= 0, torch.maximum(old, sg), torch.maximum(old, 1 - sg))
    return _mean_over_signal(-(pi / denom) * adv, adv)


def ecpo_loss(logp, old_p, adv, eps: float = 0.2, delta: float = 0.1):
    """Eqs. 13-14: PPO clipping against pi'_old = max(sg(pi) / (1 + eps + delta), pi_old): the ratio of a
    sample is capped at 1 + eps + delta before clipping ('early clipped')."""
    pi = logp.exp()
    denom = torch.maximum(pi.detach() / (1 + eps + delta), _old(logp, old_p))
    ratio = pi / denom
    obj = torch.minimum(ratio * adv, ratio.clamp(1 - eps, 1 + eps) * adv)
    return _mean_over_signal(-obj, adv)


def grpo_loss(logp, old_p, adv, eps: float = 0.2):
    """GRPO/PPO ratio clipping: min(r A, clip(r, 1 - eps, 1 + eps) A), r = pi / pi_old. With pi_old = sg(pi)
    the ratio is 1, nothing is clipped and a negative's gradient w.r.t. pi is 1 / pi (V2 Eq. 16, Figure 8)."""
    ratio = torch.exp(logp - torch.log(_old(logp, old_p)))
    obj = torch.minimum(ratio * adv, ratio.clamp(1 - eps, 1 + eps) * adv)
    return _mean_over_signal(-obj, adv)


POLICY_LOSSES = {
    "gbpo": lambda cfg, logp, old_p, adv: gbpo_loss(logp, old_p, adv),
    "ecpo": lambda cfg, logp, old_p, adv: ecpo_loss(logp, old_p, adv, cfg.clip_eps, cfg.ecpo_delta),
    "grpo": lambda cfg, logp, old_p, adv: grpo_loss(logp, old_p, adv, cfg.clip_eps),
}


def policy_loss(cfg: RLConfig, logp, old_p, adv):
    """The configured policy-gradient loss; token level when logp is (N, L) (adv broadcast over the levels)."""
    if cfg.algorithm not in POLICY_LOSSES:
        raise ValueError(f"{cfg.algorithm} is not a policy-gradient loss")
    if logp.dim() == 2:
        adv = adv.reshape(-1, 1)
        old_p = old_p if old_p.dim() == 2 else torch.full_like(logp, float("nan"))
    return POLICY_LOSSES[cfg.algorithm](cfg, logp, old_p, adv)


def token_old(tok_logp: torch.Tensor, seq_logpi: torch.Tensor, old_p: torch.Tensor) -> torch.Tensor:
    """Per-level pi_old (N, L) from a sequence-level pi_old (N,) (NaN = unknown): the log-ratio
    log pi_old - log pi is spread evenly over the L levels, so the per-level ratios multiply to the sequence's."""
    L = tok_logp.shape[1]
    known = torch.isfinite(old_p) & (old_p > 0)
    shift = (torch.log(torch.where(known, old_p, torch.ones_like(old_p))) - seq_logpi.detach()) / L
    out = torch.exp(tok_logp.detach() + shift.reshape(-1, 1).to(tok_logp.dtype))
    return torch.where(known.reshape(-1, 1), out, torch.full_like(out, float("nan")))


def dpo_loss(logp_chosen, logp_rejected, ref_chosen, ref_rejected, beta: float = 0.1):
    """DPO: -log sigmoid(beta * [(log pi_c - log ref_c) - (log pi_r - log ref_r)]), averaged over pairs."""
    if logp_chosen.numel() == 0:
        return logp_chosen.sum() * 0.0
    margin = (logp_chosen - ref_chosen) - (logp_rejected - ref_rejected)
    return -F.logsigmoid(beta * margin).mean()


def token_logp(model, batch, sids: torch.Tensor, state: dict | None = None) -> torch.Tensor:
    """(B, L) log P_theta(s_l | u, s_<l) per level, teacher-forced (with gradient). `sids` (B, L)."""
    state = model.encode(batch) if state is None else state
    h = model.decode(state, sids[:, :-1])
    logits = model.heads(h)
    return torch.stack([torch.log_softmax(lg.float(), -1).gather(1, sids[:, i:i + 1])[:, 0]
                        for i, lg in enumerate(logits)], dim=1)


def sid_logp(model, batch, sids: torch.Tensor, state: dict | None = None) -> torch.Tensor:
    """log P_theta(SID | u) summed over levels, teacher-forced (with gradient). `sids` (B, L)."""
    return token_logp(model, batch, sids, state).sum(1)


def kl_to_reference(logits: list, ref_logits: list) -> torch.Tensor:
    """Mean over samples and levels of the exact KL(pi || ref) of each level's next-token distribution."""
    kls = []
    for lg, rg in zip(logits, ref_logits):
        lp, lq = torch.log_softmax(lg.float(), -1), torch.log_softmax(rg.float(), -1)
        kls.append((lp.exp() * (lp - lq)).sum(-1).mean())
    return torch.stack(kls).mean()


# ---------------------------------------------------------------------------------------------------------
# business rewards

def business_bonus(cfg: RLConfig, items: np.ndarray, first_seen_ms: np.ndarray, now_ms: np.ndarray) -> np.ndarray:
    """Additive reward per item: `cold_start_bonus` for items first seen within `cold_start_days` of the
    request, plus whatever the `business_reward` hook ("module:function") returns."""
    bonus = np.zeros(len(items))
    if cfg.cold_start_bonus:
        fresh = (now_ms - first_seen_ms) <= cfg.cold_start_days * 86_400_000
        bonus += np.where(np.isfinite(first_seen_ms) & fresh, cfg.cold_start_bonus, 0.0)
    if cfg.business_reward:
        import importlib

        module, fn = cfg.business_reward.split(":")
        bonus += np.asarray(getattr(importlib.import_module(module), fn)(items, first_seen_ms, now_ms), dtype=np.float64)
    return bonus
