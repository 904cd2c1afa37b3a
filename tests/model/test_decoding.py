"""Trie-constrained beam search and sampling (onerec.decoding) against brute force on a tiny trie."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from helpers import rand_batch
from onerec import decoding
from onerec import model as M
from onerec.item.trie import SidTrie

SIZES = (5, 4, 6)


def tiny(seed=0, n_sids=40, extra_level=False, arch="lazy", **model_kw):
    """A debug model with random weights and a trie over a random subset of the SID space (some SIDs shared)."""
    torch.manual_seed(seed)
    cfg = M.debug(codebook_sizes=SIZES, arch=arch, **model_kw)
    model = M.OneRec(cfg).eval()
    rng = np.random.default_rng(seed)
    space = np.array(list(itertools.product(*map(range, SIZES))))
    sids = space[rng.choice(len(space), n_sids, replace=False)]
    sids = np.concatenate([sids, sids[:5]])                        # 5 SIDs shared by two items each
    if extra_level:                                                # the tokenizer's disambiguation token
        sids = np.concatenate([sids, np.zeros((len(sids), 1), np.int64)], axis=1)
        sids[n_sids:, 3] = 1
    items = np.arange(len(sids)) + 1000
    return model, SidTrie.build(sids, items), cfg


def brute_force(model, batch, trie, levels=3):
    """log P(SID) of every distinct valid prefix of `levels` tokens, by teacher forcing."""
    paths = np.unique(trie.sids()[:, :levels], axis=0)
    out = []
    with torch.inference_mode():
        state = model.encode(batch)
        for r in range(batch.user.shape[0]):
            sub = model.expand(state, torch.full((len(paths),), r))
            p = torch.as_tensor(paths)
            h = model.decode(sub, p[:, :-1])
            logits = model.heads(h)
            lp = sum(torch.log_softmax(lg.float(), -1)[torch.arange(len(p)), p[:, i]] for i, lg in enumerate(logits))
            out.append(lp.double().numpy())
    return paths, np.stack(out)


@pytest.fixture(params=[False, True], ids=["math", "kernels"])
def attention_kernels(request, monkeypatch):
    """The incremental decoder's two attention implementations (plain tensor math on CPU, SDPA kernels on GPU),
    both run here on CPU."""
    init = decoding._IncrementalLazy.__init__

    def forced(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.kernels = request.param

    monkeypatch.setattr(decoding._IncrementalLazy, "__init__", forced)
    return request.param


@pytest.mark.parametrize("arch, model_kw, fill", [
    ("lazy", {}, 1.0),                                              # the incremental decoder
    ("lazy", {"kv_layers": 2, "kv_split": 2, "kv_groups": 4}, 0.5),  # two K/V sets, K != V, no GQA, padded context
    ("encdec", {}, 1.0)])                                           # full re-decode
def test_beam_search_is_exact_top_k_of_brute_force(arch, model_kw, fill, attention_kernels):
    model, trie, cfg = tiny(arch=arch, **model_kw)
    batch = rand_batch(cfg, B=3, seed=1, fill=fill)
    paths, scores = brute_force(model, batch, trie)
    gen = decoding.beam_search(model, batch, trie, beam_size=len(paths))   # nothing pruned: exact
    for r in range(3):
        order = np.argsort(-scores[r], kind="stable")
        np.testing.assert_allclose(gen.logp[r], scores[r][order], rtol=1e-5, atol=1e-5)
        assert {tuple(s) for s in gen.sids[r]} == {tuple(s) for s in paths}
    # beam search prunes approximately in general; a beam as wide as the widest non-leaf level prunes
    # nothing before the last level, so its top-k (k < number of SIDs) is exact
    k = max(len(t) for t in trie.tokens[:-1])
    assert k < len(paths)
    small = decoding.beam_search(model, batch, trie, beam_size=k)
    for r in range(3):
        np.testing.assert_allclose(small.logp[r], np.sort(scores[r])[::-1][:k], rtol=1e-5, atol=1e-5)


def test_no_invalid_sid_over_many_requests_and_batched_equals_one_by_one(attention_kernels):
    model, trie, cfg = tiny(seed=3, n_sids=60)
    batch = rand_batch(cfg, B=16, seed=2, fill=0.6)
    gen = decoding.beam_search(model, batch, trie, beam_size=32)
    valid = gen.nodes >= 0
    assert valid.sum() == 16 * 32
    assert all(trie.contains(s) for s in gen.sids[valid])
    for r in (0, 7, 15):
        one = M.Batch(batch.user[r:r + 1], {k: M.Pathway(p.item[r:r + 1], p.sid[r:r + 1], p.feat[r:r + 1],
                                                         p.mask[r:r + 1]) for k, p in batch.paths.items()})
        single = decoding.beam_search(model, one, trie, beam_size=32)
        np.testing.assert_array_equal(single.sids[0], gen.sids[r])
        np.testing.assert_allclose(single.logp[0], gen.logp[r], rtol=1e-5, atol=1e-6)


def test_context_positions_nobody_uses_are_dropped_and_change_nothing(attention_kernels):
    """A position padded in every request of the batch (here the whole lifelong pathway, and a few more) gets
    attention weight exactly 0: the CPU decoder drops it instead of masking it, and a one-request batch needs
    no mask at all. The result is still teacher forcing over the full, masked context."""
    model, trie, cfg = tiny(seed=2)
    batch = rand_batch(cfg, B=3, seed=7, fill=0.6)
    batch.paths["long"].mask[:] = False
    batch.paths["long"].item[:] = 0
    paths, scores = brute_force(model, batch, trie)
    gen = decoding.beam_search(model, batch, trie, beam_size=len(paths))
    for r in range(3):
        np.testing.assert_allclose(gen.logp[r], np.sort(scores[r])[::-1], rtol=1e-5, atol=1e-5)
    if attention_kernels:          # the kernel path reads the context as it is
        return
    with torch.inference_mode():
        state = model.encode(batch)
        used = int(state["mask"].any(0).sum())
        assert used < state["mask"].shape[1] - dict(cfg.pathways)["long"]
        dec = decoding._IncrementalLazy(model, state, 3)
        assert all(kT.shape[-1] == v.shape[-2] == used for kT, v in dec.kv)
        assert dec.bias is not None                                  # the three requests differ in padding
        one = decoding._IncrementalLazy(model, model.encode(M.Batch(
            batch.user[:1], {k: M.Pathway(p.item[:1], p.sid[:1], p.feat[:1], p.mask[:1])
                             for k, p in batch.paths.items()})), 1)
        assert one.bias is None and one.kv[0][0].shape[-1] == int(batch.paths["short"].mask[0].sum()
                                                                 + batch.paths["positive"].mask[0].sum()) + 1


def test_folded_cpu_weights_match_the_model_and_follow_in_place_updates():
    """The CPU path folds every RMSNorm scale (and 1/sqrt(d_head)) into the next linear. Norm scales of 1, as
    initialised, would hide a wrong fold, so they are random here, with an MoE layer left unfolded; then one
    scale changes in place, as an optimizer step does, and the next decode must see it."""
    model, trie, cfg = tiny(seed=5, n_experts=4, top_k=2, moe_first_dense=1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and (name.startswith("blocks") or name.startswith("heads")):
                p.uniform_(0.5, 1.5)
    batch = rand_batch(cfg, B=2, seed=9)

    def check():
        paths, scores = brute_force(model, batch, trie)
        gen = decoding.beam_search(model, batch, trie, beam_size=len(paths))
        for r in range(2):
            np.testing.assert_allclose(gen.logp[r], np.sort(scores[r])[::-1], rtol=1e-5, atol=1e-5)
        return gen

    before = check()
    blocks, _ = decoding._folded(model)                                   # the cached weights, not rebuilt
    assert decoding._folded(model)[0] is blocks
    assert blocks[0].gate_up is not None and blocks[1].gate_up is None    # layer 0 dense, folded; layer 1 MoE, as is
    with torch.no_grad():
        model.blocks[1].norm_self.weight.mul_(3.0)
        model.heads.norms[2].weight.mul_(0.25)
    after = check()
    assert not np.allclose(before.logp, after.logp)


def test_beam_larger_than_trie_pads_and_items_resolve_by_sharing_rule():
    model, trie, cfg = tiny(n_sids=10)
    batch = rand_batch(cfg, B=2, seed=4)
    gen = decoding.beam_search(model, batch, trie, beam_size=decoding.MAX_BEAM)
    assert (gen.nodes >= 0).sum(axis=1).tolist() == [10, 10]
    assert np.isneginf(gen.logp[:, 10:]).all()
    recs = decoding.resolve(trie, gen, n=100)
    assert len(recs[0]) == 15                                    # 10 SIDs, 5 of them with two items
    for rec in recs[0]:
        shared = len(trie.items_of(rec.sid))
        assert rec.gen_prob == pytest.approx(np.exp(rec.logp) / shared)
    with pytest.raises(ValueError):
        decoding.beam_search(model, batch, trie, beam_size=decoding.MAX_BEAM + 1)


def test_three_level_model_over_four_level_trie():
    model, trie, cfg = tiny(extra_level=True)
    assert trie.depth == 4
    batch = rand_batch(cfg, B=2, seed=5)
    paths, scores = brute_force(model, batch, trie, levels=3)
    gen = decoding.beam_search(model, batch, trie, beam_size=len(paths))
    np.testing.assert_allclose(gen.logp[0], np.sort(scores[0])[::-1], rtol=1e-5, atol=1e-5)
    recs = decoding.resolve(trie, gen, n=1000)[0]
    assert sorted(r.item_id for r in recs) == sorted(trie.items.tolist())   # every item reachable once
    total = sum(np.exp(g) for g in gen.logp[0])
    assert sum(r.gen_prob for r in recs) == pytest.approx(total)            # sharing splits, never inflates


def test_sampling_and_greedy_only_yield_valid_sids():
    model, trie, cfg = tiny(seed=6, n_sids=30)
    batch = rand_batch(cfg, B=4, seed=6)
    g = torch.Generator().manual_seed(0)
    for temperature, top_k in ((1.0, 0), (2.0, 3), (0.5, 1)):
        out = decoding.sample(model, batch, trie, n=64, temperature=temperature, top_k=top_k, generator=g)
        assert (out.nodes >= 0).all() and all(trie.contains(s) for s in out.sids.reshape(-1, 3))
        assert (out.sample_logp <= 1e-9).all()
    greedy = decoding.greedy(model, batch, trie)
    np.testing.assert_allclose(greedy.sample_logp, 0.0)
    # greedy follows the best child at every level, exactly like a beam of one
    beam1 = decoding.beam_search(model, batch, trie, beam_size=1)
    np.testing.assert_array_equal(greedy.sids, beam1.sids)
    np.testing.assert_allclose(greedy.logp, beam1.logp, rtol=1e-6)
