"""Post-training plumbing: the RSFT filter, RL batches, and the RL objective that plugs into onerec.train.

`RLObjective` wraps the policy as a module whose forward returns (None, loss), so the shared training loop
(AdamW, schedule, clipping, safetensors checkpoints with exact resume, DDP) trains RL exactly as it trains
pretraining. The frozen reference (SFT) model and reward model are held outside the module tree: they are
neither optimised nor checkpointed. One step:
  logged exposures (source feedback | hybrid): duration-aware advantages from q and dislike, pi_old = the
      served gen_prob when our model produced the exposure, else sg(pi_theta);
  on-policy rollouts (source reward_model | hybrid): G trie-constrained samples per user scored by the
      reward model's P-score (+ business rewards), group-normalised advantages, pi_old = the rollout's
      generation probability; optional unconstrained samples earn the format reward (SID maps to items);
  dpo: beam-search candidates per user, best and worst by P-score form the preference pair (OneRec IPA);
  always: + gen_loss_weight x the generation loss on the logged samples (stay near the SFT model).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
import torch.nn as nn
import torch.nn.functional as F

from onerec import rl
from onerec.model import Batch, Pathway
from onerec.samples import SidTable, collate


# ---------------------------------------------------------------------------------------------------------
# RSFT (OneRec-V1): drop the bottom share of sessions by play time

def rsft_filter(files: list[str], drop: float, session_key: str = "request_id") -> tuple[list[str], dict]:
    """Rewrite `files` keeping the samples of sessions (user, session_key) whose total play time ranks in the top
    1 - `drop` of all sessions of these files (ties broken by the session's order, stably)."""
    cols = ["user_id", session_key, "play_time_ms"]
    t = pa.concat_tables(pq.read_table(f, columns=cols) for f in files)
    keys = pc.binary_join_element_wise(pc.cast(t["user_id"], pa.string()), pc.cast(t[session_key], pa.string()), "|")
    uniq, inverse = np.unique(keys.to_numpy(zero_copy_only=False).astype(str), return_inverse=True)
    play = np.nan_to_num(pc.cast(t["play_time_ms"], pa.float64()).to_numpy(zero_copy_only=False))
    totals = np.bincount(inverse, weights=play, minlength=len(uniq))
    n_drop = int(np.floor(drop * len(uniq)))
    kept_sessions = np.ones(len(uniq), bool)
    kept_sessions[np.argsort(totals, kind="stable")[:n_drop]] = False
    keep_rows = kept_sessions[inverse]
    out, start = [], 0
    for f in files:
        pf = pq.ParquetFile(f)
        table = pf.read()
        mask = keep_rows[start: start + table.num_rows]
        start += table.num_rows
        kept = table.filter(pa.array(mask))
        if kept.num_rows:
            pq.write_table(kept, f, row_group_size=2048)
            out.append(f)
    return out, {"rsft_sessions": len(uniq), "rsft_sessions_dropped": n_drop,
                 "rsft_rows_kept": int(keep_rows.sum()), "rsft_rows": len(keep_rows)}


# ---------------------------------------------------------------------------------------------------------
# batches

def items_per_sid(sids: SidTable, levels: int) -> np.ndarray:
    """For every item of `sids` (its order), how many items share its SID at the model's depth."""
    if not len(sids.item_ids):
        return np.zeros(0, np.int64)
    _, inverse, counts = np.unique(sids.sids[:, :levels], axis=0, return_inverse=True, return_counts=True)
    return counts[inverse.reshape(-1)]


@dataclass
class RLBatch:
    batch: Batch                     # contexts + the logged SID as target
    table: pa.Table                  # the raw rows (reward-model contexts, item ids)
    n_items: torch.Tensor            # (B,) items sharing the target SID
    q: torch.Tensor                  # (B,) duration-aware percentile, NaN = null
    dislike: torch.Tensor            # (B,)
    gen_prob: torch.Tensor           # (B,) served generation probability, NaN where our model did not serve it
    bonus: torch.Tensor              # (B,) business reward of the impressed item
    play: torch.Tensor               # (B,) play time (ms): breaks ties in q (RLConfig.ties = "rank")

    def to(self, device):
        return RLBatch(self.batch.to(device), self.table, *(t.to(device) for t in
                       (self.n_items, self.q, self.dislike, self.gen_prob, self.bonus, self.play)))


def _f64(table: pa.Table, name: str) -> np.ndarray:
    return pc.cast(table[name], pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64)


def collate_rl(table: pa.Table, cfg, sids: SidTable, counts: np.ndarray, rcfg: rl.RLConfig,
               first_seen: dict | None = None) -> RLBatch:
    batch = collate(table, cfg, sids)
    items = table["item_id"].to_numpy()
    pos = np.clip(np.searchsorted(sids.item_ids, items), 0, max(len(sids.item_ids) - 1, 0))
    gen = _f64(table, "gen_prob")
    served = pc.fill_null(pc.equal(table["source"], "model"), False).to_numpy(zero_copy_only=False)
    gen = np.where(served & np.isfinite(gen) & (gen > 0), gen, np.nan)
    seen = np.array([first_seen.get(int(i), np.nan) for i in items]) if first_seen else np.full(len(items), np.nan)
    bonus = rl.business_bonus(rcfg, items, seen, _f64(table, "ts"))
    return RLBatch(batch, table, torch.from_numpy(counts[pos].astype(np.float64)), torch.from_numpy(_f64(table, "q")),
                   torch.from_numpy(np.nan_to_num(_f64(table, "dislike"))), torch.from_numpy(gen),
                   torch.from_numpy(bonus), torch.from_numpy(np.nan_to_num(_f64(table, "play_time_ms"))))


def take(batch: Batch, index: torch.Tensor) -> Batch:
    """Rows of a Batch (with repetition): contexts for G rollouts of the same user."""
    paths = {k: Pathway(p.item[index], p.sid[index], p.feat[index], p.mask[index]) for k, p in batch.paths.items()}
    return Batch(batch.user[index], paths, None if batch.target is None else batch.target[index])


# ---------------------------------------------------------------------------------------------------------
# the objective

class RLObjective(nn.Module):
    def __init__(self, policy, cfg: rl.RLConfig, trie=None, sids: SidTable | None = None, reference=None,
                 reward=None, first_seen: dict | None = None):
        super().__init__()
        self.policy, self.cfg, self.trie, self.sids = policy, cfg, trie, sids
        self._frozen = (reference, reward)          # a tuple: not registered, not optimised, not checkpointed
        self.first_seen = first_seen or {}
        self._sums: dict = {}
        self._steps = 0
        needs_rm = cfg.source in ("reward_model", "hybrid") or cfg.algorithm == "dpo"
        if needs_rm and cfg.rollout_users and (reward is None or trie is None):
            raise ValueError(f"rl.source={cfg.source} / algorithm={cfg.algorithm} needs a reward model and a trie")

    def moe_layers(self):
        return self.policy.moe_layers()

    # -- statistics averaged between two log steps ---------------------------------------------------
    def _record(self, **stats):
        for k, v in stats.items():
            self._sums[k] = self._sums.get(k, 0.0) + float(v)

    def pop_stats(self) -> dict:
        out = {k: v / max(self._steps, 1) for k, v in self._sums.items()}
        self._sums, self._steps = {}, 0
        return out

    # -- one step ----------------------------------------------------------------------------------------
    def forward(self, rb: RLBatch):
        cfg, policy = self.cfg, self.policy
        self._steps += 1
        target = rb.batch.target
        state = policy.encode(rb.batch)
        logits = policy.heads(policy.decode(state, target[:, :-1]))
        gen_loss = torch.stack([F.cross_entropy(lg.float(), target[:, i]) for i, lg in enumerate(logits)]).mean()
        total = cfg.gen_loss_weight * gen_loss
        stats = {"gen_loss": gen_loss.item(), "n_feedback": 0, "n_rollout": 0, "n_format": 0, "n_dpo_pairs": 0}

        if cfg.algorithm != "dpo" and cfg.source in ("feedback", "hybrid"):
            adv, tau = rl.shape_advantages(rb.q.cpu().numpy(), rb.dislike.cpu().numpy(), cfg.top_quantile, cfg.ties,
                                           tiebreak=rb.play.cpu().numpy())
            adv = np.where(adv > 0, adv + rb.bonus.cpu().numpy(), adv)   # business rewards lift positives only
            logp = sum(torch.log_softmax(lg.float(), -1).gather(1, target[:, i:i + 1])[:, 0] for i, lg in enumerate(logits))
            logpi = logp.double() - torch.log(rb.n_items.double())
            a = torch.from_numpy(adv).to(logpi.device)
            loss = rl.policy_loss(cfg, logpi, rb.gen_prob.to(logpi.device), a)
            total = total + cfg.rl_weight * loss.float()
            n = len(adv)
            stats.update(rl_loss_feedback=loss.item(), n_feedback=n, tau_b=tau if np.isfinite(tau) else 1.0,
                         adv_mean=float(adv.mean()) if n else 0.0, adv_pos_share=float((adv > 0).mean()) if n else 0.0,
                         adv_neg_share=float((adv < 0).mean()) if n else 0.0,
                         filtered_share=float((adv == 0).mean()) if n else 0.0,
                         served_share=float(torch.isfinite(rb.gen_prob).float().mean()) if n else 0.0)

        reward = self._frozen[1]
        users = min(cfg.rollout_users, target.shape[0])
        if reward is not None and users and (cfg.algorithm == "dpo" or cfg.source in ("reward_model", "hybrid")):
            index = torch.randperm(target.shape[0])[:users]   # torch's RNG: checkpointed, so resume is exact
            if cfg.algorithm == "dpo":
                loss, s = self._dpo(rb, index)
            else:
                loss, s = self._rollouts(rb, index)
            total = total + cfg.rollout_weight * loss.float()
            stats.update(s)
        self._record(**stats)
        return None, total

    def _pscore(self, rb: RLBatch, rows: np.ndarray, items: np.ndarray) -> np.ndarray:
        from onerec.reward_model import rm_batch

        reward = self._frozen[1]
        b = rm_batch(rb.table.take(pa.array(rows)), reward.context_cfg, self.sids, items=items, with_labels=False)
        with torch.no_grad():
            return reward.p_score(b.to(next(reward.parameters()).device)).double().cpu().numpy()

    def _pick_items(self, depth: int, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One item per generated SID, uniformly among the items sharing it (the sharing rule), and their count."""
        from onerec.decoding import items_under

        items, counts = np.full(len(nodes), -1, np.int64), np.ones(len(nodes))
        for i, node in enumerate(nodes):
            if node >= 0:
                under = items_under(self.trie, depth, int(node))
                items[i], counts[i] = under[int(torch.randint(len(under), ()))], len(under)
        return items, counts

    def _rollouts(self, rb: RLBatch, index: torch.Tensor):
        from onerec import decoding

        cfg, policy, G = self.cfg, self.policy, self.cfg.group_size
        sub = take(rb.batch, index)
        gen = decoding.sample(policy, sub, self.trie, n=G, temperature=cfg.temperature)
        L = gen.sids.shape[2]
        items, counts = self._pick_items(L, gen.nodes.reshape(-1))
        rows = np.repeat(index.numpy(), G)
        rewards = self._pscore(rb, rows, items)
        now = np.repeat(_f64(rb.table, "ts")[index.numpy()], G)
        seen = np.array([self.first_seen.get(int(i), np.nan) for i in items])
        rewards = rewards + rl.business_bonus(cfg, items, seen, now)
        adv = rl.group_advantages(rewards.reshape(-1, G)).reshape(-1)
        old = np.exp(gen.logp.reshape(-1)) / counts
        sids = torch.from_numpy(gen.sids.reshape(-1, L)).to(rb.q.device)
        rep = torch.repeat_interleave(index, G).to(rb.q.device)
        logpi = rl.sid_logp(policy, take(rb.batch, rep), sids).double() - torch.log(torch.from_numpy(counts)).to(sids.device)
        adv_t, old_t = torch.from_numpy(adv), torch.from_numpy(old)
        n_format = 0
        if cfg.format_samples:
            f_logpi, f_adv = self._format(rb, index)
            n_format = len(f_adv)
            logpi, adv_t = torch.cat([logpi, f_logpi]), torch.cat([adv_t, f_adv])
            old_t = torch.cat([old_t, torch.full((n_format,), float("nan"), dtype=torch.float64)])
        loss = rl.policy_loss(cfg, logpi, old_t.to(logpi.device), adv_t.to(logpi.device))
        return loss, {"rl_loss_rollout": loss.item(), "n_rollout": len(adv), "n_format": n_format,
                      "rollout_pscore_mean": float(rewards.mean()), "rollout_adv_abs_mean": float(np.abs(adv).mean())}

    def _format(self, rb: RLBatch, index: torch.Tensor):
        """Unconstrained samples: +format_reward when the SID maps to items, -format_penalty otherwise."""
        policy, n = self.policy, self.cfg.format_samples
        rep = torch.repeat_interleave(index, n).to(rb.q.device)
        sub = take(rb.batch, rep)
        with torch.no_grad():
            state = policy.encode(sub)
            prefix = torch.zeros(len(rep), 0, dtype=torch.long, device=rep.device)
            for _ in range(len(policy.cfg.codebook_sizes)):
                probs = policy.next_logits(state, prefix).exp()
                prefix = torch.cat([prefix, torch.multinomial(probs, 1)], dim=1)
        nodes = np.zeros(len(rep), np.int64)
        for d in range(prefix.shape[1]):
            nodes = self.trie.step(d, nodes, prefix[:, d].cpu().numpy())
        valid = nodes >= 0
        adv = torch.from_numpy(np.where(valid, self.cfg.format_reward, -self.cfg.format_penalty).astype(np.float64))
        logpi = rl.sid_logp(policy, sub, prefix).double()
        self._record(format_valid_share=float(valid.mean()))
        return logpi, adv

    def _dpo(self, rb: RLBatch, index: torch.Tensor):
        from onerec import decoding

        cfg, policy, ref = self.cfg, self.policy, self._frozen[0]
        sub = take(rb.batch, index)
        gen = decoding.beam_search(policy, sub, self.trie, cfg.dpo_candidates)
        U, K, L = gen.sids.shape
        items, _ = self._pick_items(L, gen.nodes.reshape(-1))
        valid = gen.nodes.reshape(-1) >= 0
        rows = np.repeat(index.numpy(), K)
        scores = np.full(U * K, np.nan)
        scores[valid] = self._pscore(rb, rows[valid], items[valid])
        scores = scores.reshape(U, K)
        has_pair = (np.isfinite(scores).sum(1) >= 2)
        if not has_pair.any():
            return policy.target.bos.sum() * 0.0, {"n_dpo_pairs": 0}
        u = np.nonzero(has_pair)[0]
        best = np.nanargmax(scores[u], axis=1)
        worst = np.nanargmin(scores[u], axis=1)
        chosen = torch.from_numpy(gen.sids[u, best])
        rejected = torch.from_numpy(gen.sids[u, worst])
        ctx = take(rb.batch, index[torch.from_numpy(u)])
        lp_c, lp_r = rl.sid_logp(policy, ctx, chosen), rl.sid_logp(policy, ctx, rejected)
        with torch.no_grad():
            ref_c, ref_r = rl.sid_logp(ref, ctx, chosen), rl.sid_logp(ref, ctx, rejected)
        loss = rl.dpo_loss(lp_c, lp_r, ref_c, ref_r, cfg.dpo_beta)
        return loss, {"rl_loss_dpo": loss.item(), "n_dpo_pairs": len(u),
                      "dpo_pscore_margin": float(np.mean(scores[u, best] - scores[u, worst]))}
