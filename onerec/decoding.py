"""Trie-constrained generation of semantic IDs: beam search for serving/evaluation, sampling for RL rollouts.

The context is encoded once per request (`model.encode`) and every beam of every step reads it through
`model.expand` (an index into the batch dimension), so a beam of 512 costs 512 short decoder passes, not
512 context passes. Beams only follow edges of the semantic-ID trie (`onerec.item.trie.SidTrie`): a token
is scored only if it extends a prefix of some assigned SID, so an invalid SID cannot be produced.

Levels: the model predicts `len(cfg.codebook_sizes)` levels (3, or 4 when it was trained on the tokenizer's
`extra_level` disambiguation token). When the trie is deeper than the model (a 3-level model over a
4-level trie), decoding stops at the model's depth and the trie is read truncated there.

SID sharing rule (several items under one generated SID or 3-level prefix): the generative policy picks the
SID with the model's probability and then one of its items uniformly, so each item gets
    gen_prob = P(SID) / n_items(SID),
the exact probability that this policy serves it (what RL needs as pi_old). In a ranked list all items of a
SID are listed together, in beam order of their SIDs, ascending item id within a SID (the trie's order);
the disambiguation token carries no meaning, so no item of a shared SID is preferred over another.

Scores are the model's own log-probabilities (log-softmax over the full vocabulary, summed over levels):
masking decides which SIDs compete, it does not renormalise them. Sampling necessarily renormalises over
the valid children; it returns that sampling log-probability next to the model's.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from onerec.item.trie import SidTrie
from onerec.model import SwiGLU, unit_rms

MAX_BEAM = 512


@dataclass
class Generated:
    """Per request, up to K semantic IDs (padded: node -1, logp -inf)."""
    sids: np.ndarray        # (B, K, L) int64, -1 on padding
    nodes: np.ndarray       # (B, K) trie node at depth L, -1 on padding
    logp: np.ndarray        # (B, K) model log-probability of the SID (sum over levels)
    sample_logp: np.ndarray | None = None   # sampling only: log-probability under the sampling policy


@dataclass
class Recommendation:
    item_id: int
    sid: tuple
    logp: float             # log P(SID) under the model
    gen_prob: float         # P(SID) / items sharing it: the probability that this policy serves the item


def _levels(model, trie: SidTrie) -> int:
    levels = len(model.cfg.codebook_sizes)
    if trie.depth < levels:
        raise ValueError(f"the trie has {trie.depth} levels but the model predicts {levels}")
    return levels


def _ragged_arange(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """concat(arange(s, s + c) for s, c in zip(starts, counts)) without a Python loop."""
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    shift = np.repeat(starts - (np.cumsum(counts) - counts), counts)
    return np.arange(total, dtype=np.int64) + shift


def _edges(trie: SidTrie, depth: int, nodes: np.ndarray):
    """Every allowed (beam, token, child) at `depth` for beams at `nodes` (-1 = dead beam)."""
    alive = nodes >= 0
    safe = np.where(alive, nodes, 0)
    a, b = trie.offsets[depth][safe], trie.offsets[depth][safe + 1]
    counts = np.where(alive, b - a, 0)
    child = _ragged_arange(a, counts)     # child node ids at depth+1 == edge ids at this depth
    beam = np.repeat(np.arange(len(nodes)), counts)
    return beam, trie.tokens[depth][child].astype(np.int64), child


# ---------------------------------------------------------------------------------------------------------
# the CPU decoder's weights: every RMSNorm scale folded into the linear that reads the norm's output

@dataclass
class _FoldedBlock:
    cross_q: torch.Tensor           # cross-attention query, after norm_cross
    qkv: torch.Tensor               # self-attention q|k|v after norm_self; q rows also carry 1/sqrt(d_head)
    gate_up: torch.Tensor | None    # SwiGLU gate|up after norm_ffn, one matmul (None: an MoE layer, left as is)


_FOLDED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()   # model -> (parameter versions, weights)


@torch.no_grad()
def _folded(model) -> tuple[list[_FoldedBlock], list[torch.Tensor]]:
    """RMSNorm(x) @ W^T == model.unit_rms(x) @ (W * sqrt(d) * norm.weight)^T. Folding the scale into W removes a pass over
    the activations per norm (three per block and level), and the self-attention's 1/sqrt(d_head) goes into the q
    rows. Built once per model and rebuilt when a parameter changed: training updates them in place (the version
    counter moves) or replaces them (the data pointer moves), and RL rollouts decode between optimizer steps."""
    params = [*model.blocks.parameters(), *model.heads.parameters()]
    key = tuple((p.data_ptr(), p._version) for p in params)
    cached = _FOLDED.get(model)
    if cached is not None and cached[0] == key:
        return cached[1]
    cfg = model.cfg
    root_d = cfg.d_model ** 0.5

    def fold(norm, *linears):
        return (torch.cat([lin.weight for lin in linears]) * (norm.weight * root_d)).contiguous()

    blocks = []
    for b in model.blocks:
        qkv = fold(b.norm_self, b.self_attn.qkv)
        qkv[:cfg.d_model] *= cfg.d_head ** -0.5
        gate_up = fold(b.norm_ffn, b.ffn.gate, b.ffn.up) if isinstance(b.ffn, SwiGLU) else None
        blocks.append(_FoldedBlock(fold(b.norm_cross, b.cross.q), qkv, gate_up))
    heads = [fold(norm, lin) for norm, lin in zip(model.heads.norms, model.heads.linears)]
    _FOLDED[model] = (key, (blocks, heads))
    return blocks, heads


class _Recompute:
    """Any architecture: every step re-decodes [BOS, prefix] of each beam through `model.next_logits`."""

    def __init__(self, model, state, requests: int):
        self.model, self.state = model, state
        self.owner = torch.arange(requests)                  # request of each row
        self.prefix = torch.zeros(requests, 0, dtype=torch.long)

    def advance(self, parent: np.ndarray, tokens: np.ndarray, slots: np.ndarray, width: int) -> None:
        parent = torch.as_tensor(parent)
        self.owner = self.owner[parent]
        self.prefix = torch.cat([self.prefix[parent], torch.as_tensor(tokens)[:, None]], dim=1)

    def logp(self) -> torch.Tensor:
        return self.model.next_logits(self.model.expand(self.state, self.owner), self.prefix)


class _IncrementalLazy:
    """The lazy decoder one token at a time, for all beams of all requests at once.

    Self-attention K/V of earlier positions are cached per beam and reordered with the beams, so a step runs
    only the newest token of each beam (model.decode recomputes the whole prefix). Cross-attention needs no
    copy of the context per beam: the beams of a request are laid out as the query positions of that
    request, (B, K, d_model), so one attention call per request reads its context K/V once. The result
    equals model.decode's up to float rounding, which the tests check."""

    def __init__(self, model, state, requests: int):
        self.model, self.cfg, self.state = model, model.cfg, state
        self.cache: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(model.blocks)
        self.level, self.tokens = 0, None
        self.B, self.width = requests, 1
        self.device = model.target.bos.device                # beams run where the model is (CPU or GPU)
        self.slots = torch.arange(requests, device=self.device)   # row -> slot in the (B, width) beam grid
        self.dense = True                                    # every slot is live: rows == slots, no scatter
        # Attention kernels or plain tensor math: for these tiny shapes (<= 3 self-attention keys, a few hundred
        # context keys) a CPU pays more for the kernel call than for the math, while a GPU pays per launch and
        # the kernels launch fewer times. Tests run both ways on CPU.
        self.kernels = self.device.type != "cpu"
        self.folded = None
        if not self.kernels:
            self._layout_context(state["kv"], state["mask"])
            self.folded = _folded(model)

    def _layout_context(self, kv: list, mask: torch.Tensor) -> None:
        """Per K/V set, laid out once per request for the cross-attention matmuls: K^T (B, G, d_head, S) with the
        1/sqrt(d_head) of the scores folded in, V (B, G, S, d_head). Context positions that no request uses
        (padding of pathways, e.g. an empty lifelong pathway) get weight exactly 0, so they are dropped rather
        than masked: a one-request batch needs no mask at all, and every score, softmax and weighted sum is
        over the real context only. What padding is left becomes an additive bias (B, 1, 1, S)."""
        keep = mask.any(0)
        cols = torch.nonzero(keep)[:, 0] if bool(keep.any()) else torch.arange(mask.shape[1], device=mask.device)
        scale = self.cfg.d_head ** -0.5
        self.kv = [((k[:, cols] * scale).permute(0, 2, 3, 1).contiguous(), v[:, cols].transpose(1, 2).contiguous())
                   for k, v in kv]
        mask = mask[:, cols]
        self.bias = None if bool(mask.all()) else torch.zeros(
            mask.shape, dtype=self.kv[0][0].dtype, device=self.device).masked_fill(~mask, float("-inf"))[:, None, None, :]

    def advance(self, parent: np.ndarray, tokens: np.ndarray, slots: np.ndarray, width: int) -> None:
        index = torch.as_tensor(parent, device=self.device)
        self.cache = [(k[index], v[index]) for k, v in self.cache]
        self.level, self.tokens = self.level + 1, torch.as_tensor(tokens, device=self.device)
        self.slots, self.width = torch.as_tensor(slots, device=self.device), width
        self.dense = len(slots) == self.B * width            # slots are ascending and unique

    def _cross(self, block, x: torch.Tensor, layer: int) -> torch.Tensor:
        """Lazy cross-attention of the (B * width, d_model) beam grid, GQA as matmuls: the query heads of one
        K/V group are stacked along the query axis, so each group's context is read by one matmul."""
        cfg, B, W = self.cfg, self.B, self.width
        H, G, dh = cfg.n_heads, cfg.kv_groups, cfg.d_head
        if self.kernels:
            k, v = self.state["kv"][layer * cfg.kv_layers // cfg.n_layers]
            return block.cross(x.view(B, W, H * dh), k, v, self.state["mask"]).reshape(B * W, H * dh)
        kT, v = self.kv[layer * cfg.kv_layers // cfg.n_layers]
        q = F.linear(x, self.folded[0][layer].cross_q)     # x: unit-RMS rows, norm_cross's scale is in the weight
        q = q.view(B, W, G, H // G, dh).permute(0, 2, 3, 1, 4).reshape(B, G, H // G * W, dh)
        scores = torch.matmul(q, kT)                     # already scaled by 1/sqrt(d_head) through K^T
        if self.bias is not None:
            scores += self.bias
        w = torch.softmax(scores, dim=-1)
        y = torch.matmul(w, v).view(B, G, H // G, W, dh).permute(0, 3, 1, 2, 4).reshape(B * W, H * dh)
        return block.cross.out(y)

    def logp(self) -> torch.Tensor:
        m, cfg, j = self.model, self.cfg, self.level
        emb = m.target.bos[None] if j == 0 else m.target.levels[j - 1](self.tokens)
        rows = len(self.slots)
        h = (emb + m.target.pos[j]).expand(rows, -1)                  # (N, d_model): the newest position
        H, dh, D = cfg.n_heads, cfg.d_head, cfg.d_model
        grid = None if self.dense else torch.zeros(self.B * self.width, D, dtype=h.dtype, device=self.device)
        folded = None if self.kernels else self.folded      # the math path reads folded weights, the kernels the model
        for layer, block in enumerate(m.blocks):
            f = folded[0][layer] if folded else None
            x = unit_rms(h, block.norm_cross.eps) if f else block.norm_cross(h)
            grid = x if self.dense else grid.index_copy(0, self.slots, x)
            cross = self._cross(block, grid, layer)
            h = h + (cross if self.dense else cross[self.slots])
            qkv = F.linear(unit_rms(h, block.norm_self.eps), f.qkv) if f else block.self_attn.qkv(block.norm_self(h))
            q, sk, sv = qkv.view(rows, 3, H, 1, dh).unbind(1)
            if j:
                sk, sv = torch.cat([self.cache[layer][0], sk], 2), torch.cat([self.cache[layer][1], sv], 2)
            self.cache[layer] = (sk, sv)                               # (N, H, positions so far, d_head)
            # the newest token attends to every position of its beam (causal): at most 3 keys
            if j == 0:                  # one key: its softmax weight is exactly 1
                y = sv
            elif self.kernels:
                y = F.scaled_dot_product_attention(q, sk, sv)
            else:                       # q already carries 1/sqrt(d_head) (folded weights)
                y = (torch.softmax((q * sk).sum(-1, keepdim=True), dim=2) * sv).sum(2)
            h = h + block.self_attn.out(y.reshape(rows, D))
            if f and f.gate_up is not None:
                gate, up = F.linear(unit_rms(h, block.norm_ffn.eps), f.gate_up).chunk(2, dim=-1)
                h = h + block.ffn.down(F.silu(gate) * up)
            else:
                h = h + block.ffn(block.norm_ffn(h))
        if folded:
            logits = F.linear(unit_rms(h, m.heads.norms[j].eps), folded[1][j])
        else:
            logits = m.heads(h, level=j)
        return torch.log_softmax(logits.float(), dim=-1)


def _decoder(model, state, requests: int):
    return (_IncrementalLazy if model.cfg.arch == "lazy" else _Recompute)(model, state, requests)


@torch.inference_mode()
def beam_search(model, batch, trie: SidTrie, beam_size: int, state: dict | None = None) -> Generated:
    """The `beam_size` most probable valid SIDs per request (batched over requests)."""
    if not 1 <= beam_size <= MAX_BEAM:
        raise ValueError(f"beam_size must be in [1, {MAX_BEAM}], got {beam_size}")
    levels = _levels(model, trie)
    state = model.encode(batch) if state is None else state
    B = batch.user.shape[0]
    dec = _decoder(model, state, B)
    # beams of all requests are flat: request r owns slots r*K .. r*K+K-1 (K grows from 1 to beam_size);
    # the decoder holds one row per live slot, in slot order
    nodes = np.zeros((B, 1), dtype=np.int64)
    scores = np.zeros((B, 1), dtype=np.float64)
    prefix = np.zeros((B, 1, 0), dtype=np.int64)
    for depth in range(levels):
        K = nodes.shape[1]
        alive = np.nonzero(nodes.reshape(-1) >= 0)[0]
        row, token, child = _edges(trie, depth, nodes.reshape(-1)[alive])   # row: decoder row of each edge
        logp = dec.logp()                                   # (rows, vocabulary), where the model runs
        vocab = logp.shape[1]
        fits = token < vocab            # a trie newer than the model may hold codes its heads do not have
        row, token, child = row[fits], token[fits], child[fits]
        if not len(row):
            raise ValueError("no SID of the trie fits the model's vocabulary")
        # only the allowed entries leave the device: on a GPU the whole matrix is 512 x 8192 per level
        flat = torch.as_tensor(row * vocab + token, device=logp.device)
        beam = alive[row]                                   # flat slot of every allowed edge's beam
        cand = scores.reshape(-1)[beam] + logp.reshape(-1)[flat].double().cpu().numpy()
        # per request top-K over a padded (B, max candidates) matrix; edges are grouped by request already
        req = beam // K
        counts = np.bincount(req, minlength=B)
        starts = np.cumsum(counts) - counts
        width = int(counts.max())
        grid = np.full((B, width), -np.inf)
        grid[req, np.arange(len(req)) - starts[req]] = cand
        k = min(beam_size, width)
        top = torch.topk(torch.from_numpy(grid), k, dim=1)
        values = top.values.numpy()
        valid = np.isfinite(values)
        edge = np.where(valid, starts[:, None] + top.indices.numpy(), 0)
        parent_prefix = prefix.reshape(B * K, depth)[beam[edge]]          # (B, k, depth)
        prefix = np.where(valid[..., None], np.concatenate([parent_prefix, token[edge][..., None]], axis=2), -1)
        nodes = np.where(valid, child[edge], -1)
        scores = np.where(valid, values, -np.inf)
        if depth + 1 < levels:
            keep = valid.reshape(-1)
            dec.advance(row[edge.reshape(-1)[keep]], token[edge.reshape(-1)[keep]], np.nonzero(keep)[0], k)
    return Generated(sids=prefix, nodes=nodes, logp=scores)


@torch.inference_mode()
def sample(model, batch, trie: SidTrie, n: int = 1, temperature: float = 1.0, top_k: int = 0,
           generator: torch.Generator | None = None, state: dict | None = None) -> Generated:
    """`n` SIDs per request drawn from the constrained policy: at each level the model's distribution over
    the valid children, divided by `temperature` (0 = greedy) and cut to the `top_k` best (0 = all)."""
    if n < 1 or temperature < 0 or top_k < 0:
        raise ValueError("need n >= 1, temperature >= 0, top_k >= 0")
    levels = _levels(model, trie)
    state = model.encode(batch) if state is None else state
    B = batch.user.shape[0]
    dec = _decoder(model, state, B)   # level 0 is the same for the n samples of a request: one row each
    nodes = np.zeros(B * n, dtype=np.int64)
    prefix = np.zeros((B * n, 0), dtype=np.int64)
    model_logp = np.zeros(B * n)
    sample_logp = np.zeros(B * n)
    for depth in range(levels):
        logp = dec.logp().double().cpu()
        if depth == 0:
            logp = logp.repeat_interleave(n, dim=0)
        allowed = torch.zeros_like(logp, dtype=torch.bool)
        beam, token, _ = _edges(trie, depth, nodes)
        fits = token < logp.shape[1]
        allowed[torch.from_numpy(beam[fits]), torch.from_numpy(token[fits])] = True
        masked = logp.masked_fill(~allowed, -np.inf)
        if top_k:
            kth = torch.topk(masked, min(top_k, masked.shape[1]), dim=1).values[:, -1:]
            masked = masked.masked_fill(masked < kth, -np.inf)
        if temperature == 0:
            choice = masked.argmax(dim=1)
            policy = torch.where(torch.arange(masked.shape[1])[None] == choice[:, None], 0.0, -np.inf).double()
        else:
            policy = torch.log_softmax(masked / temperature, dim=1)
            choice = torch.multinomial(policy.exp(), 1, generator=generator)[:, 0]
        picked = choice.numpy()
        model_logp += logp[torch.arange(len(picked)), choice].numpy()
        sample_logp += policy[torch.arange(len(picked)), choice].numpy()
        nodes = trie.step(depth, nodes, picked)
        prefix = np.concatenate([prefix, picked[:, None]], axis=1)
        if depth + 1 < levels:
            parent = np.repeat(np.arange(B), n) if depth == 0 else np.arange(B * n)
            dec.advance(parent, picked, np.arange(B * n), n)
    return Generated(sids=prefix.reshape(B, n, levels), nodes=nodes.reshape(B, n),
                     logp=model_logp.reshape(B, n), sample_logp=sample_logp.reshape(B, n))


@torch.inference_mode()
def beam_search_unconstrained(model, batch, beam_size: int) -> np.ndarray:
    """(B, K, L) SIDs of a plain beam search over the full vocabulary: how often the model alone would
    generate an SID that no item has (the invalid-generation rate the trie prevents)."""
    levels = len(model.cfg.codebook_sizes)
    state = model.encode(batch)
    B = batch.user.shape[0]
    prefix = torch.zeros(B, 1, 0, dtype=torch.long)
    scores = torch.zeros(B, 1, dtype=torch.float64)
    for depth in range(levels):
        K = prefix.shape[1]
        sub = model.expand(state, torch.arange(B).repeat_interleave(K))
        logp = model.next_logits(sub, prefix.reshape(B * K, depth)).double().view(B, K, -1)
        V = logp.shape[2]
        top = torch.topk((scores[..., None] + logp).view(B, K * V), min(beam_size, K * V), dim=1)
        parent, token = top.indices // V, top.indices % V
        prefix = torch.cat([torch.gather(prefix, 1, parent[..., None].expand(-1, -1, depth)), token[..., None]], 2)
        scores = top.values
    return prefix.numpy()


def greedy(model, batch, trie: SidTrie, state: dict | None = None) -> Generated:
    return sample(model, batch, trie, n=1, temperature=0.0, state=state)


def items_under(trie: SidTrie, depth: int, node: int) -> np.ndarray:
    """Items of every leaf below `node` at `depth` (the node itself when depth == trie.depth)."""
    lo, hi = node, node + 1
    for d in range(depth, trie.depth):   # children of a contiguous node range are contiguous
        lo, hi = int(trie.offsets[d][lo]), int(trie.offsets[d][hi])
    return trie.items[trie.leaf_offsets[lo]:trie.leaf_offsets[hi]]


def resolve(trie: SidTrie, gen: Generated, n: int) -> list[list[Recommendation]]:
    """Per request, the first `n` items of the generated SIDs under the sharing rule (module docstring)."""
    depth = gen.sids.shape[2]
    out = []
    for r in range(gen.sids.shape[0]):
        recs: list[Recommendation] = []
        for k in range(gen.sids.shape[1]):
            if gen.nodes[r, k] < 0 or len(recs) >= n:
                continue
            items = items_under(trie, depth, int(gen.nodes[r, k]))
            p = float(np.exp(gen.logp[r, k])) / max(len(items), 1)
            sid = tuple(int(t) for t in gen.sids[r, k])
            recs.extend(Recommendation(int(i), sid, float(gen.logp[r, k]), p) for i in items[: n - len(recs)])
        out.append(recs)
    return out


def recommend(model, batch, trie: SidTrie, n: int, beam_size: int | None = None) -> list[list[Recommendation]]:
    """Top-n items per request: a beam of max(n, beam_size) SIDs, resolved to items."""
    beam = min(max(n, beam_size or n), MAX_BEAM)
    return resolve(trie, beam_search(model, batch, trie, beam), n)
