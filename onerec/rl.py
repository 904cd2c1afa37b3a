"""Post-training math: duration-aware reward shaping (OneRec-V2 Sec. 3.1.1) and the policy losses
GBPO (V2 Eqs. 11-12), ECPO (V2 Eqs. 13-14, OneRec-V1), GRPO/PPO ratio clipping, and DPO (OneRec's
iterative preference alignment), plus the objective that mixes them with the generation loss.

The action o_i is a whole item: its semantic ID, then one of the items sharing that SID uniformly (the
sharing rule of onerec.decoding), so
    pi_theta(o|u) = P_theta(SID | u) / n_items(SID),
the same quantity the server logs as `gen_prob`; that makes the served probability a valid pi_old.
Sequence level, not token level: pi_old is only known for the whole SID.

Every loss takes log pi_theta (with gradient), pi_old (NaN where unknown: a legacy/random exposure, then
pi_old = sg(pi_theta) as the V2 paper prescribes) and advantages A, and averages over the samples that
carry a signal (A != 0): the scale then does not depend on how many samples the shaping filtered, and a
batch with no positive and no negative is an exact no-op (loss 0, zero gradient, never NaN).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

ALGORITHMS = ("gbpo", "ecpo", "grpo", "dpo")
SOURCES = ("feedback", "reward_model", "hybrid")


@dataclass
class RLConfig:
    algorithm: str = "gbpo"          # gbpo (V2) | ecpo (V1) | grpo (PPO ratio clipping) | dpo (V1 IPA, RM pairs)
    source: str = "feedback"         # feedback: logged exposures | reward_model: on-policy rollouts | hybrid: both
    top_quantile: float = 0.25       # tau_B: positives are q above the batch's top-25% quantile (Sec. 3.1.1)
    ties: str = "rank"               # q tied at tau_B: rank (top 25% by q, then play time) | strict (q > tau_B only)
    clip_eps: float = 0.2            # epsilon of ECPO / GRPO clipping
    ecpo_delta: float = 0.1          # delta of ECPO's early clip, Eq. 14
    gen_loss_weight: float = 1.0     # generation (NTP) loss mixed in to stay near the SFT model
    rl_weight: float = 1.0           # weight of the feedback RL loss
    rollout_weight: float = 1.0      # weight of the rollout (reward-model) RL loss
    rollout_users: int = 8           # users of each batch that get on-policy rollouts
    group_size: int = 4              # G rollouts per user (advantage = reward normalised within the group)
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
        if self.ties not in ("rank", "strict"):
            raise ValueError(f"rl.ties must be 'rank' or 'strict', got {self.ties!r}")
        if not 0 < self.top_quantile < 1:
            raise ValueError(f"rl.top_quantile must be in (0, 1), got {self.top_quantile}")
        if self.group_size < 1 or self.rollout_users < 0 or self.ecpo_delta <= 0 or self.clip_eps <= 0:
            raise ValueError("rl: need group_size >= 1, rollout_users >= 0, ecpo_delta > 0, clip_eps > 0")


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


def group_advantages(rewards: np.ndarray) -> np.ndarray:
    """(users, G) rollout rewards -> GRPO/ECPO advantages (r - mean) / std within each user's group;
    a group with equal rewards carries no preference: 0."""
    r = np.asarray(rewards, dtype=np.float64)
    std = r.std(axis=1, keepdims=True)
    return np.where(std > 1e-8, (r - r.mean(axis=1, keepdims=True)) / np.maximum(std, 1e-8), 0.0)


# ---------------------------------------------------------------------------------------------------------
# policy losses; logp = log pi_theta(o|u) (grad), old_p = pi_old (no grad, NaN = unknown), adv = A

def _old(logp: torch.Tensor, old_p: torch.Tensor) -> torch.Tensor:
    """pi_old, with sg(pi_theta) where the exposure did not come from our model (V2, 'Gradient Analysis')."""
    p = logp.detach().exp()
    return torch.where(torch.isfinite(old_p) & (old_p > 0), old_p.to(p.dtype), p)


def _mean_over_signal(per_sample: torch.Tensor, adv: torch.Tensor) -> torch.Tensor:
    keep = (adv != 0).to(per_sample.dtype)
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


def policy_loss(cfg: RLConfig, logp, old_p, adv):
    if cfg.algorithm == "gbpo":
        return gbpo_loss(logp, old_p, adv)
    if cfg.algorithm == "ecpo":
        return ecpo_loss(logp, old_p, adv, cfg.clip_eps, cfg.ecpo_delta)
    if cfg.algorithm == "grpo":
        return grpo_loss(logp, old_p, adv, cfg.clip_eps)
    raise ValueError(f"{cfg.algorithm} is not a policy-gradient loss")


def dpo_loss(logp_chosen, logp_rejected, ref_chosen, ref_rejected, beta: float = 0.1):
    """DPO: -log sigmoid(beta * [(log pi_c - log ref_c) - (log pi_r - log ref_r)]), averaged over pairs."""
    if logp_chosen.numel() == 0:
        return logp_chosen.sum() * 0.0
    margin = (logp_chosen - ref_chosen) - (logp_rejected - ref_rejected)
    return -F.logsigmoid(beta * margin).mean()


def sid_logp(model, batch, sids: torch.Tensor, state: dict | None = None) -> torch.Tensor:
    """log P_theta(SID | u) summed over levels, teacher-forced (with gradient). `sids` (B, L)."""
    state = model.encode(batch) if state is None else state
    h = model.decode(state, sids[:, :-1])
    logits = model.heads(h)
    return sum(torch.log_softmax(lg.float(), -1).gather(1, sids[:, i:i + 1])[:, 0] for i, lg in enumerate(logits))


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
