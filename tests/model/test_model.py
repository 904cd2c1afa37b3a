"""The lazy decoder-only model and its baselines: shapes, masking, the paper's degenerate cases, FLOPs, MoE."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from onerec import model as M
from helpers import rand_batch


@pytest.mark.parametrize("arch", M.ARCHS)
def test_shapes_and_initial_loss(arch):
    torch.manual_seed(0)
    cfg = M.debug(arch=arch)
    logits, loss = M.OneRec(cfg)(rand_batch(cfg, B=5))
    assert [tuple(lg.shape) for lg in logits] == [(5, n) for n in cfg.codebook_sizes]
    # at init the model is close to uniform: loss ~ mean log(vocab)
    assert abs(loss.item() - math.log(16)) < 0.3


@pytest.mark.parametrize("arch", M.ARCHS)
def test_no_target_token_sees_a_later_one_and_padding_is_ignored(arch):
    torch.manual_seed(0)
    cfg = M.debug(arch=arch)
    model = M.OneRec(cfg).eval()
    batch = rand_batch(cfg, B=3, fill=0.6)
    base = model(batch)[0]
    changed = rand_batch(cfg, B=3, fill=0.6)
    batch2 = M.Batch(batch.user, batch.paths, batch.target.clone())
    batch2.target[:, 1] = (batch.target[:, 1] + 1) % cfg.codebook_sizes[1]   # change s2 only
    out = model(batch2)[0]
    assert torch.allclose(out[0], base[0], atol=1e-6) and torch.allclose(out[1], base[1], atol=1e-6)
    assert not torch.allclose(out[2], base[2], atol=1e-6)
    # padded context positions may hold anything
    noisy = {k: M.Pathway(torch.where(p.mask, p.item, changed.paths[k].item), p.sid,
                          torch.where(p.mask[..., None], p.feat, 100 * changed.paths[k].feat), p.mask)
             for k, p in batch.paths.items()}
    out = model(M.Batch(batch.user, noisy, batch.target))[0]
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(out, base))


def test_incremental_decoding_matches_teacher_forcing():
    torch.manual_seed(0)
    for arch in M.ARCHS:
        cfg = M.debug(arch=arch)
        model = M.OneRec(cfg).eval()
        batch = rand_batch(cfg, B=3)
        logits = model(batch)[0]
        state = model.encode(batch)
        for level in range(3):
            step = model.next_logits(state, batch.target[:, :level])
            assert torch.allclose(step, F.log_softmax(logits[level], -1), atol=1e-5), arch


def _reference_lazy(model: M.OneRec, batch: M.Batch):
    """Plain reference: per-layer K/V from the context by explicit slicing, multi-head attention written out
    with softmax and full heads (K/V repeated per query head), no SDPA, no GQA."""
    cfg = model.cfg
    ctx, mask = model.context(batch)
    B, S, _ = ctx.shape
    chunk = cfg.kv_groups * cfg.d_head
    h = model.target(batch.target[:, :-1])

    def attend(q, k, v, allowed):
        scores = q @ k.transpose(-1, -2) / math.sqrt(cfg.d_head)
        return torch.softmax(scores.masked_fill(~allowed, float("-inf")), -1) @ v

    for layer, blk in enumerate(model.blocks):
        kv_set = layer * cfg.kv_layers // cfg.n_layers
        i = kv_set * cfg.kv_split
        k = blk_norm = model.kv_norms[i](ctx[..., i * chunk:(i + 1) * chunk])
        v = model.kv_norms[i + 1](ctx[..., (i + 1) * chunk:(i + 2) * chunk]) if cfg.kv_split == 2 else blk_norm
        rep = cfg.n_heads // cfg.kv_groups
        k = k.view(B, S, cfg.kv_groups, cfg.d_head).repeat_interleave(rep, dim=2).transpose(1, 2)
        v = v.view(B, S, cfg.kv_groups, cfg.d_head).repeat_interleave(rep, dim=2).transpose(1, 2)
        x = blk.norm_cross(h)
        q = blk.cross.q(x).view(B, -1, cfg.n_heads, cfg.d_head).transpose(1, 2)
        y = attend(q, k, v, mask[:, None, None, :]).transpose(1, 2).reshape(B, -1, cfg.d_model)
        h = h + blk.cross.out(y)
        x = blk.norm_self(h)
        q, kk, vv = blk.self_attn.qkv(x).view(B, -1, 3, cfg.n_heads, cfg.d_head).permute(2, 0, 3, 1, 4)
        causal = torch.ones(3, 3, dtype=torch.bool).tril()
        y = attend(q, kk, vv, causal).transpose(1, 2).reshape(B, -1, cfg.d_model)
        h = h + blk.self_attn.out(y)
        h = h + blk.ffn(blk.norm_ffn(h))
    return model.heads(h)


@pytest.mark.parametrize("kv_layers, kv_split, kv_groups", [
    (2, 2, 4),   # degenerate: every layer its own K and V, G_kv = heads -> standard cross-attention
    (1, 1, 4),   # K/V shared across layers and K = V
    (2, 1, 2),   # GQA with 2 groups for 4 heads
    (1, 2, 1),   # multi-query attention
])
def test_lazy_cross_attention_equals_plain_reference(kv_layers, kv_split, kv_groups):
    torch.manual_seed(0)
    cfg = M.debug(kv_layers=kv_layers, kv_split=kv_split, kv_groups=kv_groups)
    model = M.OneRec(cfg).eval()
    batch = rand_batch(cfg, B=3, fill=0.7)
    assert model.context.proj["short"].out_features == kv_split * kv_layers * kv_groups * cfg.d_head  # Eq. 1
    got, want = model(batch)[0], _reference_lazy(model, batch)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(got, want))


def test_kv_set_per_layer_follows_eq_9():
    cfg = M.debug(n_layers=6, kv_layers=3)
    assert [layer * cfg.kv_layers // cfg.n_layers for layer in range(6)] == [0, 0, 1, 1, 2, 2]


@pytest.mark.parametrize("arch", M.ARCHS)
@pytest.mark.parametrize("experts", [0, 4])
def test_analytic_flops_match_torch_flop_counter(arch, experts):
    torch.manual_seed(0)
    cfg = M.debug(arch=arch, n_experts=experts, moe_first_dense=1, top_k=2)
    model, batch = M.OneRec(cfg), rand_batch(cfg, B=2)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:   # math path: scores counted
        model(batch)
    measured = counter.get_total_flops() / 2
    assert measured == pytest.approx(M.forward_flops(cfg)["total"], rel=0.10)


def test_lazy_decoder_concentrates_flops_on_the_target():
    # Appendix B: at equal parameters the lazy decoder spends a small fraction of the classic models' FLOPs
    lazy, encdec, naive = (M.forward_flops(M.small(arch=a), context_len=512)["total"] for a in M.ARCHS)
    assert encdec > 10 * lazy and naive > 10 * lazy


def test_moe_bias_update_evens_out_a_skewed_router():
    torch.manual_seed(0)
    cfg = M.debug(n_experts=8, top_k=2, moe_first_dense=0, bias_update_rate=0.02)
    moe = M.MoE(cfg).train()
    with torch.no_grad():
        moe.router.weight[0] += 0.3     # with inputs of positive mean, expert 0 is everybody's favourite
        moe.router.weight[1] += 0.15
    x = torch.randn(512, cfg.d_model) + 0.5

    def imbalance():
        moe(x)
        load = moe.load.clone()
        moe.update_bias()
        return (load.max() / load.mean()).item()

    first = imbalance()
    for _ in range(150):
        last = imbalance()
    assert first > 2.0 and last < 1.3 and last < first / 2
    assert moe.bias[0] < 0 < moe.bias[2:].mean()   # the favourite got pushed down


def test_moe_is_dense_in_the_first_layers_and_counts_active_params():
    cfg = M.debug(n_layers=4, n_experts=6, top_k=2, moe_first_dense=2)
    model = M.OneRec(cfg)
    kinds = [type(b.ffn).__name__ for b in model.blocks]
    assert kinds == ["SwiGLU", "SwiGLU", "MoE", "MoE"]
    per_expert = sum(p.numel() for p in model.blocks[2].ffn.experts[0].parameters())
    assert model.num_params() - model.num_params(active=True) == 2 * 4 * per_expert


def test_paper_presets_have_their_sizes():
    sizes = {}
    for name in ("0.1b", "1b", "8b", "4b-a0.5b"):
        with torch.device("meta"):
            m = M.OneRec(M.build(name))
        sizes[name] = (m.num_params() / 1e9, m.num_params(active=True) / 1e9)
    assert 0.08 < sizes["0.1b"][0] < 0.2 and 0.8 < sizes["1b"][0] < 1.3 and 5.5 < sizes["8b"][0] < 9
    assert 3.5 < sizes["4b-a0.5b"][0] < 5 and 0.45 < sizes["4b-a0.5b"][1] < 0.8
    with pytest.raises(ValueError, match="unknown model preset"):
        M.build("3b")


def test_dropout_is_active_only_in_training_and_off_by_default():
    cfg = M.debug(dropout=0.3)
    torch.manual_seed(0)
    model = M.OneRec(cfg)
    batch = rand_batch(cfg, B=4)
    model.train()
    a, b = model(batch)[1], model(batch)[1]
    assert a.item() != b.item()                       # two dropout masks
    model.eval()
    with torch.no_grad():
        assert model(batch)[1].item() == model(batch)[1].item()
    # p = 0 (the default): training is deterministic and consumes no random numbers
    plain = M.OneRec(M.debug())
    plain.train()
    state = torch.get_rng_state()
    assert plain(batch)[1].item() == plain(batch)[1].item()
    assert torch.equal(state, torch.get_rng_state())


def test_context_kv_keep_the_autocast_dtype():
    """Under bf16 autocast the context K/V come out in bf16, so the layers that read them need no cast; in
    float32 the norm is unchanged."""
    torch.manual_seed(0)
    cfg = M.debug()
    model = M.OneRec(cfg)
    batch = rand_batch(cfg, B=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        k, v = model.encode(batch)["kv"][0]
        _, loss = model(batch)
    assert k.dtype == v.dtype == torch.bfloat16 and torch.isfinite(loss)
    norm, x = M.RMSNorm(8), torch.randn(3, 8)
    norm.weight.data.uniform_(0.5, 1.5)
    want = norm.weight * x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + norm.eps)
    torch.testing.assert_close(norm(x), want)
    torch.testing.assert_close(norm(x.bfloat16()), want.bfloat16(), atol=2e-2, rtol=2e-2)


def test_rmsnorm_is_one_formula_with_and_without_grad():
    """Decoding normalises in place (no autograd graph to keep); training keeps F.rms_norm's autograd node.
    Both are the same formula, and the grad path still trains the weight."""
    torch.manual_seed(0)
    norm, x = M.RMSNorm(64), torch.randn(5, 7, 64) * 3
    norm.weight.data.uniform_(0.5, 1.5)
    want = norm.weight * x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + norm.eps)
    with torch.inference_mode():
        torch.testing.assert_close(norm(x), want)
    with torch.no_grad():
        torch.testing.assert_close(norm(x), want)
    y = norm(x.requires_grad_())
    torch.testing.assert_close(y, want)
    y.square().sum().backward()
    assert norm.weight.grad is not None and x.grad is not None and torch.isfinite(x.grad).all()



def test_context_embedding_equals_one_lookup_per_pathway():
    """The single table lookup over all pathways gives the per-pathway formula, values and gradients."""
    torch.manual_seed(0)
    cfg = M.debug()
    ce = M.OneRec(cfg).context
    batch = rand_batch(cfg, B=3, fill=0.6)
    got, mask = ce(batch)
    parts = [ce.user(batch.user)[:, None]]
    for name, _ in cfg.pathways:
        p = batch.paths[name]
        e = ce.item(p.item) + sum(emb(p.sid[..., i]) for i, emb in enumerate(ce.sid))
        parts.append(ce.proj[name](torch.cat([e, p.feat], -1)))
    want = torch.cat(parts, 1)
    assert torch.allclose(got, want, atol=1e-6)
    assert torch.equal(mask[:, 1:], torch.cat([batch.paths[n].mask for n, _ in cfg.pathways], 1))
    w = torch.randn_like(got)
    g_got = torch.autograd.grad((got * w).sum(), [ce.item.weight, ce.sid[0].weight])
    g_want = torch.autograd.grad((want * w).sum(), [ce.item.weight, ce.sid[0].weight])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(g_got, g_want))


def _reverse_history(batch: M.Batch, n: int) -> M.Batch:
    """Every pathway holds its first n columns (all real) in reverse order, then padding."""
    def rev(p):
        idx = torch.cat([torch.arange(n - 1, -1, -1), torch.arange(n, p.mask.shape[1])])
        mask = torch.zeros_like(p.mask)
        mask[:, :n] = True
        return M.Pathway(p.item[:, idx] * mask, p.sid[:, idx], p.feat[:, idx], mask)
    return M.Batch(batch.user, {k: rev(p) for k, p in batch.paths.items()}, batch.target)


def test_recency_positions_make_the_context_an_ordered_sequence():
    """Without positions the cross-attention sees the history as a set: reversing it changes nothing. With them
    the same items in another order give other logits, and cutting trailing padding columns (the benchmark's
    trim) changes nothing, because a rank is counted from each row's own newest event."""
    torch.manual_seed(0)
    base = rand_batch(M.debug(), B=3, fill=1.0)
    left = _reverse_history(_reverse_history(base, 5), 5)   # first 5 columns real, the rest padding
    flipped = _reverse_history(left, 5)
    plain = M.OneRec(M.debug()).eval()
    ordered = M.OneRec(M.debug(recency_positions=True)).eval()
    with torch.no_grad():
        for m in (plain, ordered):   # the new tables start like every embedding: small random vectors
            for e in getattr(m.context, "recency", {}).values():
                e.weight.normal_(0, 1.0)
        torch.testing.assert_close(plain(flipped)[0], plain(left)[0], atol=1e-5, rtol=1e-5)
        assert not torch.allclose(ordered(flipped)[0][0], ordered(left)[0][0], atol=1e-3)
        cut = M.Batch(left.user, {k: M.Pathway(p.item[:, :5], p.sid[:, :5], p.feat[:, :5], p.mask[:, :5])
                                  for k, p in left.paths.items()}, left.target)
        torch.testing.assert_close(ordered(cut)[0], ordered(left)[0], atol=1e-5, rtol=1e-5)
    assert sum(e.weight.numel() for e in ordered.context.recency.values()) == \
        sum(n for _, n in M.debug().pathways) * M.debug().embed_dim


def test_label_smoothing_is_the_reference_formula_in_training_only():
    eps, cfg = 0.2, M.debug(label_smoothing=0.2)
    torch.manual_seed(0)
    model = M.OneRec(cfg)
    batch = rand_batch(cfg, B=6)
    model.train()
    logits, loss = model(batch)
    want = []
    for i, lg in enumerate(logits):
        logp = F.log_softmax(lg.float(), -1)
        nll = -logp.gather(1, batch.target[:, i:i + 1].long()).squeeze(1)
        want.append(((1 - eps) * nll - eps * logp.mean(-1)).mean())
    torch.testing.assert_close(loss, torch.stack(want).mean())
    model.eval()
    with torch.no_grad():
        logits, loss = model(batch)
    plain = torch.stack([F.cross_entropy(lg.float(), batch.target[:, i]) for i, lg in enumerate(logits)]).mean()
    torch.testing.assert_close(loss, plain)
