"""Post-training plumbing: the RSFT filter, RL batches, and the RL objective that plugs into onerec.train.

`RLObjective` wraps the policy as a module whose forward returns (None, loss), so the shared training loop
(AdamW, schedule, clipping, safetensors checkpoints with exact resume, DDP) trains RL exactly as it trains
pretraining. The frozen reference (SFT) model and reward model are held outside the module tree: they are
neither optimised nor checkpointed. One step:
  beam groups (source beam, the default): each logged duration-aware positive (or dislike) of the batch, up to
      rollout_users of them, gets a group of group_size distinct valid items from trie-constrained beam search
      with the logged item injected when the beam missed it, rank-aware rewards (rl.beam_rewards) and
      group-normalised advantages; pi_old = the served gen_prob for the logged item when our model served it,
      sg(pi_theta) for the on-policy beam members;
  logged exposures (source feedback | hybrid): duration-aware advantages from q and dislike, pi_old = the
      served gen_prob when our model produced the exposure, else sg(pi_theta);
  on-policy rollouts (source reward_model | hybrid): G trie-constrained samples per user scored by the
      reward model's P-score (+ business rewards), group-normalised advantages, pi_old = the rollout's
      generation probability; optional unconstrained samples earn the format reward (SID maps to items);
  dpo: beam-search candidates per user, best and worst by P-score form the preference pair (OneRec IPA); with
      source beam, no reward model: the logged positive is chosen over the best-ranked other beam member (a
      disliked item is rejected in favour of the beam's best other one);
  always: + gen_loss_weight x the generation loss on the logged samples (stay near the SFT model), and
      + kl_weight x the exact per-level KL(pi || reference) on them when a reference (the SFT model) is given.
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


def _detached(state: dict) -> dict:
    """The context state without its autograd graph (beam search reads it; the loss reuses the original)."""
    return {k: ([(a.detach(), b.detach()) for a, b in v] if k == "kv" else v.detach()) for k, v in state.items()}


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
        if cfg.needs_reward_model and cfg.rollout_users and (reward is None or trie is None):
            raise ValueError(f"rl.source={cfg.source} / algorithm={cfg.algorithm} needs a reward model and a trie")
        if cfg.source == "beam" and trie is None:
            raise ValueError("rl.source=beam needs the trie (beam groups are trie-constrained)")
        if cfg.algorithm == "dpo" and reference is None:
            raise ValueError("rl.algorithm=dpo needs the frozen reference model")

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

        reference = self._frozen[0]
        if cfg.kl_weight and reference is not None:
            with torch.no_grad():
                ref_logits = reference.heads(reference.decode(reference.encode(rb.batch), target[:, :-1]))
            kl = rl.kl_to_reference(logits, ref_logits)
            total = total + cfg.kl_weight * kl
            stats["kl_ref"] = kl.item()

        need_adv = cfg.source in ("beam", "feedback", "hybrid")
        if need_adv:
            adv, tau = rl.shape_advantages(rb.q.cpu().numpy(), rb.dislike.cpu().numpy(), cfg.top_quantile, cfg.ties,
                                           tiebreak=rb.play.cpu().numpy())
            adv = np.where(adv > 0, adv + rb.bonus.cpu().numpy(), adv)   # business rewards lift positives only
            n = len(adv)
            stats.update(tau_b=tau if np.isfinite(tau) else 1.0, adv_mean=float(adv.mean()) if n else 0.0,
                         adv_pos_share=float((adv > 0).mean()) if n else 0.0,
                         adv_neg_share=float((adv < 0).mean()) if n else 0.0,
                         filtered_share=float((adv == 0).mean()) if n else 0.0,
                         served_share=float(torch.isfinite(rb.gen_prob).float().mean()) if n else 0.0)

        if cfg.algorithm != "dpo" and cfg.source in ("feedback", "hybrid"):
            tok = torch.stack([torch.log_softmax(lg.float(), -1).gather(1, target[:, i:i + 1])[:, 0]
                               for i, lg in enumerate(logits)], dim=1).double()
            logpi = tok.sum(1) - torch.log(rb.n_items.double())
            old = rb.gen_prob.to(logpi.device)
            a = torch.from_numpy(adv).to(logpi.device)
            if cfg.ratio == "token":
                loss = rl.policy_loss(cfg, tok, rl.token_old(tok, logpi, old), a)
            else:
                loss = rl.policy_loss(cfg, logpi, old, a)
            if cfg.loss_norm == "batch":
                loss = loss * (float((adv != 0).sum()) / max(len(adv), 1))
            total = total + cfg.rl_weight * loss.float()
            stats.update(rl_loss_feedback=loss.item(), n_feedback=len(adv))

        if cfg.source == "beam" and cfg.rollout_users:
            loss, s = self._beam(rb, adv)
            if cfg.loss_norm == "batch":           # each group counts as one of the batch's B samples
                loss = loss * (s["n_groups"] / max(target.shape[0], 1))
            total = total + cfg.rl_weight * loss.float()
            stats.update(s)

        reward = self._frozen[1]
        users = min(cfg.rollout_users, target.shape[0])
        if reward is not None and users and cfg.needs_reward_model:
            index = torch.randperm(target.shape[0])[:users]   # torch's RNG: checkpointed, so resume is exact
            if cfg.algorithm == "dpo":
                loss, s = self._dpo(rb, index)
            else:
                loss, s = self._rollouts(rb, index)
            total = total + cfg.rollout_weight * loss.float()
            stats.update(s)
        self._record(**stats)
        return None, total

    # -- beam groups (source beam) ------------------------------------------------------------------------
    def _beam(self, rb: RLBatch, adv: np.ndarray):
        """Groups of distinct valid items around the logged positives/dislikes of the batch (module docstring)."""
        from onerec import decoding

        cfg, policy, G = self.cfg, self.policy, self.cfg.group_size
        signal = np.nonzero(adv != 0)[0]
        if not len(signal):                       # no group without signal: nothing to learn from this batch
            return policy.target.bos.sum() * 0.0, {"n_groups": 0}
        pick = torch.randperm(len(signal))[:cfg.rollout_users].numpy()   # torch's RNG: checkpointed
        rows = np.sort(signal[pick])
        index = torch.from_numpy(rows)
        sub = take(rb.batch, index)
        state = policy.encode(sub)
        with torch.no_grad():
            gen = decoding.beam_search(policy, sub, self.trie, G, state=_detached(state))
        U, K, L = gen.sids.shape
        sids, valid = np.full((U, G, L), -1, np.int64), np.zeros((U, G), bool)
        sids[:, :K], valid[:, :K] = gen.sids, gen.nodes >= 0
        counts = np.ones((U, G))
        for u, j in zip(*np.nonzero(valid)):
            counts[u, j] = len(decoding.items_under(self.trie, L, int(gen.nodes[u, j])))
        target = rb.batch.target[index].cpu().numpy()
        match = (sids == target[:, None, :]).all(-1) & valid
        hit = match.any(1)
        slot = np.where(hit, match.argmax(1), -1)
        for u in np.nonzero(~hit)[0]:             # inject the logged item: every group carries its signal
            free = np.nonzero(~valid[u])[0]
            j = int(free[0]) if len(free) else G - 1
            sids[u, j], valid[u, j], slot[u] = target[u], True, j
        counts[np.arange(U), slot] = rb.n_items[index].cpu().numpy()
        rewards = rl.beam_rewards(slot, valid, adv[rows], cfg.rank_penalty)
        stats = {"n_groups": U, "group_hit_share": float(hit.mean()), "group_members": float(valid.sum(1).mean())}
        if cfg.algorithm == "dpo":
            return self._dpo_beam(sub, state, sids, valid, slot, adv[rows], stats)
        A = rl.group_advantages(rewards)
        flat = np.nonzero(valid.reshape(-1))[0]
        member_state = policy.expand(state, torch.from_numpy(flat // G))
        msids = torch.from_numpy(sids.reshape(-1, L)[flat])
        tok = rl.token_logp(policy, None, msids, state=member_state).double()
        logpi = tok.sum(1) - torch.log(torch.from_numpy(counts.reshape(-1)[flat]))
        old = np.full((U, G), np.nan)
        old[np.arange(U), slot] = rb.gen_prob[index].cpu().numpy()    # served by our model: the logged gen_prob
        old_t = torch.from_numpy(old.reshape(-1)[flat])
        a = torch.from_numpy(A.reshape(-1)[flat])
        if cfg.ratio == "token":
            loss = rl.policy_loss(cfg, tok, rl.token_old(tok, logpi, old_t), a)
        else:
            loss = rl.policy_loss(cfg, logpi, old_t, a)
        stats.update(rl_loss_beam=loss.item(), beam_adv_abs_mean=float(np.abs(a.numpy()).mean()))
        return loss, stats

    def _dpo_beam(self, sub, state, sids, valid, slot, reward, stats):
        """DPO on beam groups: the logged positive over the best-ranked other member, or the best-ranked other
        member over a disliked logged item; the frozen reference is the SFT model."""
        policy, ref = self.policy, self._frozen[0]
        U, G, L = sids.shape
        other = valid & (np.arange(G)[None] != slot[:, None])
        has = other.any(1)
        if not has.any():
            return policy.target.bos.sum() * 0.0, {**stats, "n_dpo_pairs": 0}
        u = np.nonzero(has)[0]
        best_other = other[u].argmax(1)                          # beam order: the first other member ranks highest
        pos = reward[u] > 0
        chosen = np.where(pos[:, None], sids[u, slot[u]], sids[u, best_other])
        rejected = np.where(pos[:, None], sids[u, best_other], sids[u, slot[u]])
        st = policy.expand(state, torch.from_numpy(u))
        c, r = torch.from_numpy(chosen), torch.from_numpy(rejected)
        lp_c, lp_r = rl.sid_logp(policy, None, c, st), rl.sid_logp(policy, None, r, st)
        with torch.no_grad():
            ref_state = ref.expand(ref.encode(sub), torch.from_numpy(u))
            ref_c, ref_r = rl.sid_logp(ref, None, c, ref_state), rl.sid_logp(ref, None, r, ref_state)
        loss = rl.dpo_loss(lp_c, lp_r, ref_c, ref_r, self.cfg.dpo_beta)
        return loss, {**stats, "rl_loss_dpo": loss.item(), "n_dpo_pairs": len(u)}

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


# ---------------------------------------------------------------------------------------------------------
# checkpoint selection on held-out rows

def hold_out_newest(files: list[str], share: float, max_rows: int) -> tuple[list[str], pa.Table]:
    """Rewrite `files` without the newest `share` of their rows (by ts) and return those held-out rows (at most
    `max_rows`, evenly spaced in time): RL selects its checkpoint on them, so they must not be trained on."""
    ts = np.concatenate([pq.read_table(f, columns=["ts"])["ts"].to_numpy() for f in files])
    if len(ts) < 2:
        raise ValueError("too few samples to hold out a validation share")
    cut = np.sort(ts)[min(len(ts) - 1, int(np.floor((1 - share) * len(ts))))]
    kept, held = [], []
    for f in files:
        t = pq.read_table(f)
        late = pc.greater_equal(t["ts"], cut)
        held.append(t.filter(late))
        rest = t.filter(pc.invert(late))
        if rest.num_rows:
            pq.write_table(rest, f, row_group_size=2048)
            kept.append(f)
    val = pa.concat_tables(held)
    if val.num_rows > max_rows:
        val = val.take(pa.array(np.linspace(0, val.num_rows - 1, max_rows).round().astype(np.int64)))
    return kept, val


def validation_score(model, trie, sids: SidTable, table: pa.Table, cfg: rl.RLConfig, k: int = 10,
                     beam: int = 32, batch_size: int = 64) -> dict:
    """Hit rate @k of the logged item in trie-constrained beam search over held-out rows: over the duration-aware
    positives (what RL targets) and over all rows (what the generation loss learns); score = their mean, so a
    checkpoint that trades recall for duration is not preferred to one that keeps both."""
    from onerec import decoding

    target_hits = []
    with torch.no_grad():
        for start in range(0, table.num_rows, batch_size):
            part = table.slice(start, batch_size)
            b = collate(part, model.cfg, sids)
            gen = decoding.beam_search(model, b, trie, max(beam, k))
            top = gen.sids[:, :k]
            target_hits.append((top == b.target.numpy()[:, None, :]).all(-1).any(1))
    hit = np.concatenate(target_hits) if target_hits else np.zeros(0, bool)
    q = pc.cast(table["q"], pa.float64()).to_numpy(zero_copy_only=False)
    play = np.nan_to_num(pc.cast(table["play_time_ms"], pa.float64()).to_numpy(zero_copy_only=False))
    dislike = np.nan_to_num(pc.cast(table["dislike"], pa.float64()).to_numpy(zero_copy_only=False))
    adv, _ = rl.shape_advantages(q, dislike, cfg.top_quantile, cfg.ties, tiebreak=play)
    pos = adv > 0
    hit_pos = float(hit[pos].mean()) if pos.any() else 0.0
    hit_all = float(hit.mean()) if len(hit) else 0.0
    return {"score": 0.5 * (hit_pos + hit_all), "hit_positive": hit_pos, "hit_all": hit_all, "rows": int(len(hit))}
