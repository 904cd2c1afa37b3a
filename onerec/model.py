"""OneRec models in one readable module: the OneRec-V2 lazy decoder-only model and its two baselines.

Lazy decoder-only (OneRec-V2 Sec. 2.2, Eqs. 1-10):
  context processor: every pathway (static profile, short-term, positive-feedback, long-term) is linearly
  projected to d_context = S_kv * L_kv * G_kv * d_head, concatenated along the sequence, split along the
  feature axis into S_kv * L_kv chunks and RMSNorm'd into L_kv (k, v) sets (S_kv = 1: v = k);
  lazy decoder blocks over [BOS, s1, s2]: cross-attention with NO K/V projection (the context already is
  K/V) using grouped-query attention with G_kv groups, layer l reading kv set floor(l * L_kv / N_layer);
  causal self-attention; FFN, or MoE after the first `moe_first_dense` layers; position-specific heads;
  loss = mean NLL of the 3 semantic tokens.
Baselines at equal parameters on the same batches: the OneRec-V1 encoder-decoder (encoder over the context
tokens, decoder with projected cross-attention) and a naive decoder-only model (context and target tokens in
one causal sequence). All three share the context embedding, so only the architecture differs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

ARCHS = ("lazy", "encdec", "naive")


@dataclass
class ModelConfig:
    arch: str = "lazy"               # "lazy" | "encdec" (OneRec-V1) | "naive" decoder-only
    d_model: int = 128
    n_layers: int = 4                # decoder blocks (encdec: decoder layers; encoder has n_enc_layers)
    n_heads: int = 4                 # query heads; d_head = d_model // n_heads
    kv_groups: int = 4               # G_kv: key/value head groups of the lazy cross-attention (GQA)
    kv_layers: int = 1               # L_kv: distinct context K/V sets shared by consecutive blocks
    kv_split: int = 1                # S_kv: 1 shares K = V (the paper's default), 2 separates them
    d_ff: int = 0                    # dense FFN hidden size (SwiGLU); 0 -> 8/3 * d_model rounded to 64
    n_enc_layers: int = 0            # encdec only: encoder layers (0 -> n_layers, i.e. 1:1)
    # --- mixture of experts (DeepSeek-V3 style, auxiliary-loss-free balancing) ---
    n_experts: int = 0               # routed experts; 0 = dense everywhere
    n_shared_experts: int = 1        # always-on experts added to the routed output
    top_k: int = 2                   # experts per token
    moe_d_ff: int = 0                # expert hidden size; 0 -> d_ff // 2
    moe_first_dense: int = 2         # the first layers keep a dense FFN (the paper: 2)
    bias_update_rate: float = 1e-3   # gamma of the per-expert routing-bias update
    # --- vocabulary and context ---
    codebook_sizes: tuple = (256, 256, 256)   # semantic-ID vocabulary per level (from the tokenizer)
    item_buckets: int = 1 << 16      # hashed item-id embedding rows (0 = padding)
    embed_dim: int = 32              # per-item embedding width before the pathway projections
    item_feat_dim: int = 8           # numeric side features per context item (play time, duration, flags)
    user_feat_dim: int = 8           # static profile features (one context token)
    pathways: tuple = (("short", 20), ("positive", 64), ("long", 32))  # (name, max length)
    dropout: float = 0.0             # residual-branch and context dropout while training (0 = off)
    recency_positions: bool = False  # learned embedding of each context item's rank from the newest, per pathway:
                                     # without it the cross-attention sees the history as a set (order only via
                                     # the hours-ago feature, which is flat where many events share a day)
    label_smoothing: float = 0.0     # of the per-level cross-entropy while training (0 = plain NLL)
    init_std: float = 0.02

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {ARCHS}, got {self.arch!r}")
        if self.d_model % self.n_heads:
            raise ValueError("d_model must be divisible by n_heads")
        if self.n_heads % self.kv_groups:
            raise ValueError("n_heads must be divisible by kv_groups (GQA)")
        if self.kv_split not in (1, 2) or not 1 <= self.kv_layers <= self.n_layers:
            raise ValueError("kv_split must be 1 or 2 and 1 <= kv_layers <= n_layers")
        self.codebook_sizes = tuple(self.codebook_sizes)
        self.pathways = tuple(tuple(p) for p in self.pathways)

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads

    @property
    def d_context(self) -> int:      # Eq. 1
        return self.kv_split * self.kv_layers * self.kv_groups * self.d_head

    @property
    def ffn_dim(self) -> int:
        return self.d_ff or 64 * math.ceil(8 * self.d_model / 3 / 64)

    @property
    def expert_dim(self) -> int:
        return self.moe_d_ff or max(16, self.ffn_dim // 2)

    @property
    def context_len(self) -> int:    # one static-profile token + every pathway
        return 1 + sum(n for _, n in self.pathways)

    def is_moe_layer(self, layer: int) -> bool:
        return self.n_experts > 0 and layer >= self.moe_first_dense


# ---------------------------------------------------------------------------------------------------------
# building blocks

def unit_rms(x: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm without its scale, up to sqrt(d): x * rsqrt(sum(x^2) + d * eps) == x * rsqrt(mean(x^2) + eps) / sqrt(d).
    One dot product per row and one scaling; the caller multiplies by weight * sqrt(d), or has folded it into the
    weights of the linear that reads the result (the CPU decoder, onerec.decoding)."""
    return x * torch.linalg.vecdot(x, x).add_(x.shape[-1] * eps).rsqrt_().unsqueeze_(-1)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps, self.weight = eps, nn.Parameter(torch.ones(dim))

    def forward(self, x):
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32:
            if torch.is_grad_enabled():     # training: the same formula in one autograd node
                return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
            # inference (decoding: many norms of a few hundred rows at most per request): on CPU F.rms_norm makes
            # several passes over x, one dot product per row and two scalings (unit_rms) fewer; the measurement is in
            # benchmarks/results/serving-changelog.md
            return unit_rms(x, self.eps).mul_(self.weight * math.sqrt(x.shape[-1]))
        # reduced precision (bf16 autocast): normalise in float32 and return x's dtype. Multiplying a bf16 result
        # by the float32 weight would promote it to float32: the context K/V, read by every decoder layer, would
        # then be cast back to bf16 by autocast once per layer, and their gradients summed in float32.
        x32 = x.float()
        return (self.weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps))).type_as(x)


class SwiGLU(nn.Module):
    def __init__(self, d_model: int, d_ff: int):
        super().__init__()
        self.gate, self.up = nn.Linear(d_model, d_ff, bias=False), nn.Linear(d_model, d_ff, bias=False)
        self.down = nn.Linear(d_ff, d_model, bias=False)

    def forward(self, x):
        return self.down(F.silu(self.gate(x)) * self.up(x))


class MoE(nn.Module):
    """Routed + shared SwiGLU experts with top-k sigmoid routing and auxiliary-loss-free balancing.

    DeepSeek-V3: a per-expert bias is added to the affinities only to pick the top-k (the gate weights use
    the raw affinities); after each training step the bias moves by gamma towards under-loaded experts.
    The bias is a buffer, not a parameter: no gradient, no auxiliary loss to tune.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.top_k, self.rate = cfg.top_k, cfg.bias_update_rate
        self.router = nn.Linear(cfg.d_model, cfg.n_experts, bias=False)
        self.experts = nn.ModuleList(SwiGLU(cfg.d_model, cfg.expert_dim) for _ in range(cfg.n_experts))
        self.shared = nn.ModuleList(SwiGLU(cfg.d_model, cfg.expert_dim) for _ in range(cfg.n_shared_experts))
        self.register_buffer("bias", torch.zeros(cfg.n_experts))
        self.register_buffer("load", torch.zeros(cfg.n_experts))  # tokens routed per expert since last update
        # FSDP reduce-scatters a block's gradients as one flat buffer, so every rank must give every expert a
        # gradient: train.wrap sets this under FSDP and an expert with no token here runs on zero tokens.
        self.every_expert = False

    def forward(self, x):
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        affinity = torch.sigmoid(self.router(x).float())
        chosen = torch.topk(affinity + self.bias, self.top_k, dim=-1).indices          # bias: selection only
        gates = affinity.gather(-1, chosen)
        gates = (gates / gates.sum(-1, keepdim=True)).type_as(x)
        out = sum(e(x) for e in self.shared) if self.shared else torch.zeros_like(x)
        counts = torch.bincount(chosen.flatten(), minlength=len(self.experts))
        if self.training:
            self.load += counts.to(self.load.dtype)
        for e, expert in enumerate(self.experts):
            if counts[e] == 0 and not self.every_expert:
                continue
            token, slot = torch.nonzero(chosen == e, as_tuple=True)
            out = out.index_add(0, token, expert(x[token]) * gates[token, slot, None])
        return out.reshape(shape)

    @torch.no_grad()
    def update_bias(self):
        """Called by the trainer after each optimizer step: b_i += gamma * sign(mean load - load_i)."""
        if self.load.sum() > 0:
            self.bias += self.rate * torch.sign(self.load.mean() - self.load)
        self.load.zero_()


def ffn(cfg: ModelConfig, layer: int) -> nn.Module:
    return MoE(cfg) if cfg.is_moe_layer(layer) else SwiGLU(cfg.d_model, cfg.ffn_dim)


class SelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig, causal: bool):
        super().__init__()
        self.n_heads, self.causal = cfg.n_heads, causal
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.out = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def forward(self, x, key_mask=None):
        B, T, D = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, D // self.n_heads).permute(2, 0, 3, 1, 4)
        mask = None
        if key_mask is not None:   # (B, T) True = real token
            mask = key_mask[:, None, None, :]
            if self.causal:
                mask = mask & torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=self.causal and mask is None)
        return self.out(y.transpose(1, 2).reshape(B, T, D))


class CrossAttention(nn.Module):
    """Cross-attention. lazy=True: no K/V projections, the context processor's (k, v) are used as they are
    with G_kv heads (GQA). lazy=False (OneRec-V1): K/V are projected from the encoder output."""

    def __init__(self, cfg: ModelConfig, lazy: bool):
        super().__init__()
        self.n_heads, self.d_head, self.lazy = cfg.n_heads, cfg.d_head, lazy
        self.q = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.out = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        if not lazy:
            self.kv = nn.Linear(cfg.d_model, 2 * cfg.d_model, bias=False)

    def forward(self, x, k, v, ctx_mask):
        B, T, D = x.shape
        q = self.q(x).view(B, T, self.n_heads, self.d_head).transpose(1, 2)
        mask = ctx_mask[:, None, None, :]
        if self.lazy:   # k, v: (B, S, G_kv, d_head)
            k, v = k.transpose(1, 2), v.transpose(1, 2)
            G = k.shape[1]
            if G != self.n_heads:
                # GQA as G attentions of (H/G)*T queries each: head h reads group h // (H/G), as enable_gqa does,
                # but without expanding K/V per head (CPU flash attention cost is per (batch, head) block).
                y = F.scaled_dot_product_attention(q.reshape(B, G, -1, self.d_head), k, v, attn_mask=mask)
                return self.out(y.view(B, self.n_heads, T, self.d_head).transpose(1, 2).reshape(B, T, D))
        else:           # k is the encoder output (B, S, D)
            k, v = self.kv(k).view(B, -1, 2, self.n_heads, self.d_head).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out(y.transpose(1, 2).reshape(B, T, D))


def residual_dropout(x, p: float, training: bool):
    """Dropout on a residual branch; p = 0 skips the call so that no RNG is consumed (exact resume, references)."""
    return F.dropout(x, p, training) if p > 0 and training else x


class DecoderBlock(nn.Module):
    """Eqs. 6-8: h += CrossAttn(norm h); h += SelfAttn(norm h); h += FFN(norm h)."""

    def __init__(self, cfg: ModelConfig, layer: int, lazy: bool):
        super().__init__()
        self.norm_cross, self.norm_self, self.norm_ffn = (RMSNorm(cfg.d_model) for _ in range(3))
        self.cross, self.self_attn, self.ffn = CrossAttention(cfg, lazy), SelfAttention(cfg, causal=True), ffn(cfg, layer)
        self.p_drop = cfg.dropout

    def forward(self, h, k, v, ctx_mask):
        h = h + residual_dropout(self.cross(self.norm_cross(h), k, v, ctx_mask), self.p_drop, self.training)
        h = h + residual_dropout(self.self_attn(self.norm_self(h)), self.p_drop, self.training)
        return h + residual_dropout(self.ffn(self.norm_ffn(h)), self.p_drop, self.training)


class EncoderBlock(nn.Module):
    """Pre-norm transformer block; causal=True makes it the naive decoder-only block."""

    def __init__(self, cfg: ModelConfig, layer: int, causal: bool = False):
        super().__init__()
        self.norm_attn, self.norm_ffn = RMSNorm(cfg.d_model), RMSNorm(cfg.d_model)
        self.attn, self.ffn = SelfAttention(cfg, causal=causal), ffn(cfg, layer)
        self.p_drop = cfg.dropout

    def forward(self, h, mask):
        h = h + residual_dropout(self.attn(self.norm_attn(h), mask), self.p_drop, self.training)
        return h + residual_dropout(self.ffn(self.norm_ffn(h)), self.p_drop, self.training)


# ---------------------------------------------------------------------------------------------------------
# inputs

@dataclass
class Pathway:
    item: torch.Tensor      # (B, T) hashed item ids, 0 = padding
    sid: torch.Tensor       # (B, T, 3) semantic IDs of those items
    feat: torch.Tensor      # (B, T, item_feat_dim) side features (log play time, log duration, flags, age)
    mask: torch.Tensor      # (B, T) True = real event


@dataclass
class Batch:
    user: torch.Tensor                      # (B, user_feat_dim) static profile
    paths: dict = field(default_factory=dict)  # pathway name -> Pathway
    target: torch.Tensor | None = None      # (B, 3) semantic ID of the newest impression

    def to(self, device):
        move = lambda p: Pathway(*(t.to(device) for t in (p.item, p.sid, p.feat, p.mask)))  # noqa: E731
        return Batch(self.user.to(device), {k: move(p) for k, p in self.paths.items()},
                     None if self.target is None else self.target.to(device))


class ContextEmbedding(nn.Module):
    """Items -> vectors (hashed id + semantic-ID embeddings + side features), then one linear projection per
    pathway (Sec. 2.2.1): the pathways keep their own parameters but share the item tables."""

    def __init__(self, cfg: ModelConfig, out_dim: int):
        super().__init__()
        self.cfg = cfg
        self.item = nn.Embedding(cfg.item_buckets, cfg.embed_dim, padding_idx=0)
        self.sid = nn.ModuleList(nn.Embedding(n, cfg.embed_dim) for n in cfg.codebook_sizes)
        self.user = nn.Linear(cfg.user_feat_dim, out_dim)
        self.proj = nn.ModuleDict({name: nn.Linear(cfg.embed_dim + cfg.item_feat_dim, out_dim)
                                   for name, _ in cfg.pathways})
        if cfg.recency_positions:   # one table per pathway: rank 0 of "long" is older than every "short" item
            self.recency = nn.ModuleDict({name: nn.Embedding(n, cfg.embed_dim) for name, n in cfg.pathways})

    def forward(self, batch: Batch):
        parts, masks = [self.user(batch.user)[:, None]], [torch.ones_like(batch.user[:, :1], dtype=torch.bool)]
        paths = [batch.paths[name] for name, _ in self.cfg.pathways]
        # One lookup per table over every pathway: the backward of a dense nn.Embedding zero-fills a gradient the
        # size of the whole table per call, which on CPU cost more than the decoder (65536 item buckets x 3 calls).
        sid = torch.cat([p.sid for p in paths], dim=1)
        e = self.item(torch.cat([p.item for p in paths], dim=1)) + sum(emb(sid[..., i]) for i, emb in enumerate(self.sid))
        for (name, _), p, e_p in zip(self.cfg.pathways, paths, e.split([p.item.shape[1] for p in paths], dim=1)):
            if self.cfg.recency_positions:   # pathways are left-aligned (0 = oldest kept): rank = length - 1 - column
                n = p.mask.shape[1]
                rank = p.mask.sum(1, keepdim=True) - 1 - torch.arange(n, device=p.mask.device)
                e_p = e_p + self.recency[name](rank.clamp_(0, self.recency[name].num_embeddings - 1))
            parts.append(self.proj[name](torch.cat([e_p, p.feat], dim=-1)))
            masks.append(p.mask)
        return residual_dropout(torch.cat(parts, dim=1), self.cfg.dropout, self.training), torch.cat(masks, dim=1)


class TargetEmbedding(nn.Module):
    """[BOS, s1, s2] -> (B, 3, d_model): a BOS vector, one table per semantic-ID level, and positions."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.bos = nn.Parameter(torch.zeros(cfg.d_model))
        self.levels = nn.ModuleList(nn.Embedding(n, cfg.d_model) for n in cfg.codebook_sizes[:-1])
        self.pos = nn.Parameter(torch.zeros(len(cfg.codebook_sizes), cfg.d_model))

    def forward(self, prefix):   # prefix: (B, j) the first j < 3 semantic IDs
        B = prefix.shape[0]
        toks = [self.bos.expand(B, -1)] + [self.levels[i](prefix[:, i]) for i in range(prefix.shape[1])]
        return torch.stack(toks, dim=1) + self.pos[: len(toks)]


class Heads(nn.Module):
    """Position-specific RMSNorm + linear head per semantic-ID level."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norms = nn.ModuleList(RMSNorm(cfg.d_model) for _ in cfg.codebook_sizes)
        self.linears = nn.ModuleList(nn.Linear(cfg.d_model, n, bias=False) for n in cfg.codebook_sizes)

    def forward(self, h, level: int | None = None):
        if level is not None:   # decoding: only the newest position's head
            return self.linears[level](self.norms[level](h))
        return [lin(norm(h[:, i])) for i, (norm, lin) in enumerate(zip(self.norms, self.linears))]


# ---------------------------------------------------------------------------------------------------------
# the model

class OneRec(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        ctx_dim = cfg.d_context if cfg.arch == "lazy" else cfg.d_model
        self.context = ContextEmbedding(cfg, ctx_dim)
        self.target = TargetEmbedding(cfg)
        self.heads = Heads(cfg)
        if cfg.arch == "lazy":
            self.kv_norms = nn.ModuleList(RMSNorm(cfg.kv_groups * cfg.d_head)
                                          for _ in range(cfg.kv_split * cfg.kv_layers))
            self.blocks = nn.ModuleList(DecoderBlock(cfg, i, lazy=True) for i in range(cfg.n_layers))
        elif cfg.arch == "encdec":
            n_enc = cfg.n_enc_layers or cfg.n_layers
            # The V1 encoder is dense; the decoder carries the MoE layers.
            enc_cfg = replace(cfg, n_experts=0)
            self.encoder = nn.ModuleList(EncoderBlock(enc_cfg, i) for i in range(n_enc))
            self.enc_norm = RMSNorm(cfg.d_model)
            self.blocks = nn.ModuleList(DecoderBlock(cfg, i, lazy=False) for i in range(cfg.n_layers))
        else:
            self.blocks = nn.ModuleList(EncoderBlock(cfg, i, causal=True) for i in range(cfg.n_layers))
        self.apply(self._init)

    def _init(self, m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=self.cfg.init_std)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)

    def num_params(self, active: bool = False) -> int:
        """All parameters, or (active=True) those one token uses: top-k of the routed experts."""
        total = sum(p.numel() for p in self.parameters())
        if active:
            for m in self.modules():
                if isinstance(m, MoE):
                    per = sum(p.numel() for p in m.experts[0].parameters())
                    total -= per * (len(m.experts) - m.top_k)
        return total

    # -- context ----------------------------------------------------------------------------------------
    def encode(self, batch: Batch):
        """Everything that depends on the user only: computed once per request, reused by every beam."""
        ctx, mask = self.context(batch)
        cfg = self.cfg
        if cfg.arch == "lazy":   # Eqs. 2-4: split the feature axis into S_kv * L_kv chunks, normalise
            B, S, _ = ctx.shape
            chunks = ctx.view(B, S, cfg.kv_split * cfg.kv_layers, cfg.kv_groups * cfg.d_head).unbind(2)
            kv = []
            for layer in range(cfg.kv_layers):
                k = self.kv_norms[layer * cfg.kv_split](chunks[layer * cfg.kv_split])
                v = self.kv_norms[layer * cfg.kv_split + 1](chunks[layer * cfg.kv_split + 1]) if cfg.kv_split == 2 else k
                kv.append((k.view(B, S, cfg.kv_groups, cfg.d_head), v.view(B, S, cfg.kv_groups, cfg.d_head)))
            return {"kv": kv, "mask": mask}
        if cfg.arch == "encdec":
            h = ctx
            for block in self.encoder:
                h = block(h, mask)
            return {"memory": self.enc_norm(h), "mask": mask}
        return {"ctx": ctx, "mask": mask}

    def expand(self, state: dict, index: torch.Tensor) -> dict:
        """Select/repeat the per-user context state for beams (index into the batch dimension)."""
        out = {}
        for key, val in state.items():
            if key == "kv":
                out[key] = [(k[index], v[index]) for k, v in val]
            else:
                out[key] = val[index]
        return out

    # -- decoding ---------------------------------------------------------------------------------------
    def decode(self, state: dict, prefix: torch.Tensor) -> torch.Tensor:
        """Hidden states of [BOS, prefix...] (B, 1 + j, d_model) given the context state."""
        cfg, h = self.cfg, self.target(prefix)
        if cfg.arch == "lazy":
            for layer, block in enumerate(self.blocks):
                k, v = state["kv"][layer * cfg.kv_layers // cfg.n_layers]   # Eq. 9
                h = block(h, k, v, state["mask"])
            return h
        if cfg.arch == "encdec":
            for block in self.blocks:
                h = block(h, state["memory"], None, state["mask"])
            return h
        n = h.shape[1]   # naive: one causal sequence [context..., BOS, prefix...]
        x = torch.cat([state["ctx"], h], dim=1)
        mask = torch.cat([state["mask"], torch.ones(h.shape[:2], dtype=torch.bool, device=h.device)], dim=1)
        for block in self.blocks:
            x = block(x, mask)
        return x[:, -n:]

    def next_logits(self, state: dict, prefix: torch.Tensor) -> torch.Tensor:
        """Log-probabilities of the next semantic ID (level = prefix length)."""
        h = self.decode(state, prefix)[:, -1]
        return F.log_softmax(self.heads(h, level=prefix.shape[1]).float(), dim=-1)

    def forward(self, batch: Batch):
        """Training: logits per level and the loss = mean NLL of the 3 semantic tokens (V2 uses the mean)."""
        state = self.encode(batch)
        h = self.decode(state, batch.target[:, :-1])
        logits = self.heads(h)
        loss = None
        if batch.target is not None:
            smooth = self.cfg.label_smoothing if self.training else 0.0
            loss = torch.stack([F.cross_entropy(lg.float(), batch.target[:, i], label_smoothing=smooth)
                                for i, lg in enumerate(logits)]).mean()
        return logits, loss

    def moe_layers(self) -> list[MoE]:
        return [m for m in self.modules() if isinstance(m, MoE)]


# ---------------------------------------------------------------------------------------------------------
# analytic FLOPs and activations (Appendix B, made exact for our blocks)

def forward_flops(cfg: ModelConfig, context_len: int | None = None) -> dict:
    """Matmul FLOPs of one forward pass for one sample (2 per multiply-accumulate), split into context
    encoding and target decoding. Training costs 3x (forward + backward). Elementwise ops are ignored,
    as in the paper; attention scores are included."""
    S = context_len or cfg.context_len
    D, T = cfg.d_model, len(cfg.codebook_sizes)
    n_path_tokens = S - 1
    ctx_out = cfg.d_context if cfg.arch == "lazy" else D
    context = 2 * (cfg.user_feat_dim * ctx_out + n_path_tokens * (cfg.embed_dim + cfg.item_feat_dim) * ctx_out)

    def ffn_flops(tokens, layer):
        if cfg.is_moe_layer(layer):
            per_expert = 2 * 3 * D * cfg.expert_dim
            return tokens * (2 * D * cfg.n_experts + (cfg.top_k + cfg.n_shared_experts) * per_expert)
        return tokens * 2 * 3 * D * cfg.ffn_dim

    def self_attn(tokens, keys):
        return tokens * 2 * 4 * D * D + 2 * 2 * tokens * keys * D

    heads = 2 * D * sum(cfg.codebook_sizes)
    decode = heads
    if cfg.arch == "lazy":
        for layer in range(cfg.n_layers):
            # q and o projections only; scores and values over S context keys for every query head
            decode += T * 2 * 2 * D * D + 2 * 2 * T * S * D + self_attn(T, T) + ffn_flops(T, layer)
    elif cfg.arch == "encdec":
        enc_cfg = replace(cfg, n_experts=0)
        for layer in range(cfg.n_enc_layers or cfg.n_layers):
            context += self_attn(S, S) + S * 2 * 3 * D * enc_cfg.ffn_dim
        for layer in range(cfg.n_layers):
            context += S * 2 * 2 * D * D        # K/V projections of the memory (counted as context work)
            decode += T * 2 * 2 * D * D + 2 * 2 * T * S * D + self_attn(T, T) + ffn_flops(T, layer)
    else:
        L = S + T
        for layer in range(cfg.n_layers):
            # The full causal sequence runs through every block; SDPA computes all L x L scores (masked).
            context += self_attn(S, L) + ffn_flops(S, layer)
            decode += self_attn(T, L) + ffn_flops(T, layer)
    return {"context": context, "decode": decode, "total": context + decode}


def train_flops(cfg: ModelConfig, context_len: int | None = None) -> float:
    return 3 * forward_flops(cfg, context_len)["total"]


def activation_elements(cfg: ModelConfig, context_len: int | None = None) -> int:
    """Rough count of activation elements kept for backward per sample (inputs of every matmul and norm).
    Used to compare architectures, not to size GPU memory exactly."""
    S = context_len or cfg.context_len
    D, T = cfg.d_model, len(cfg.codebook_sizes)
    ff = cfg.ffn_dim if cfg.n_experts == 0 else (cfg.top_k + cfg.n_shared_experts) * cfg.expert_dim
    per_token_block = 6 * D + 3 * ff          # norms, q/k/v/o inputs, FFN inputs and hidden
    if cfg.arch == "lazy":
        kv = S * cfg.d_context
        return kv + cfg.n_layers * T * per_token_block
    if cfg.arch == "encdec":
        return (cfg.n_enc_layers or cfg.n_layers) * S * (6 * D + 3 * cfg.ffn_dim) + cfg.n_layers * (T * per_token_block + 2 * S * D)
    return cfg.n_layers * (S + T) * per_token_block


# ---------------------------------------------------------------------------------------------------------
# presets: one builder per size (Table 5 of the V2 report, plus CPU-sized ones)

def debug(**kw) -> ModelConfig:
    """Seconds on CPU: for tests."""
    return ModelConfig(**{**dict(d_model=32, n_layers=2, n_heads=4, kv_groups=2, embed_dim=16,
                                 pathways=(("short", 8), ("positive", 16), ("long", 8)), item_buckets=1024,
                                 codebook_sizes=(16, 16, 16)), **kw})


def small(**kw) -> ModelConfig:
    """Minutes on 2 CPU cores."""
    return ModelConfig(**{**dict(d_model=128, n_layers=4, n_heads=4, kv_groups=2, embed_dim=32), **kw})


def _paper(d_model, n_layers, n_heads, embed_dim, **kw) -> ModelConfig:
    # Table 5 gives d_model, layers, heads and the item embedding width; the rest follows Sec. 2.3's defaults:
    # L_kv = S_kv = 1, G_kv = n_heads, context ~512 tokens, 8192 codes per level.
    base = dict(d_model=d_model, n_layers=n_layers, n_heads=n_heads, kv_groups=n_heads, embed_dim=embed_dim,
                codebook_sizes=(8192, 8192, 8192), item_buckets=1 << 20, item_feat_dim=16, user_feat_dim=64,
                pathways=(("short", 20), ("positive", 256), ("long", 235)))
    return ModelConfig(**{**base, **kw})


def lazy_0_1b(**kw): return _paper(640, 12, 10, 32, **kw)       # noqa: E704
def lazy_0_2b(**kw): return _paper(896, 12, 14, 45, **kw)       # noqa: E704
def lazy_0_5b(**kw): return _paper(1408, 14, 11, 70, **kw)      # noqa: E704
def lazy_1b(**kw): return _paper(1792, 18, 14, 90, **kw)        # noqa: E704
def lazy_2b(**kw): return _paper(2304, 22, 18, 115, **kw)       # noqa: E704
def lazy_4b(**kw): return _paper(2944, 26, 23, 147, **kw)       # noqa: E704
def lazy_8b(**kw): return _paper(3584, 34, 28, 179, **kw)       # noqa: E704


def lazy_4b_a0_5b(**kw):
    """The MoE variant: the 0.5B model with 53 routed + 1 shared experts, top-3, expert size 1408, after the
    first 2 blocks."""
    return _paper(1408, 14, 11, 70, **{**dict(n_experts=53, n_shared_experts=1, top_k=3, moe_d_ff=1408,
                                              moe_first_dense=2), **kw})


PRESETS = {"debug": debug, "small": small, "0.1b": lazy_0_1b, "0.2b": lazy_0_2b, "0.5b": lazy_0_5b,
           "1b": lazy_1b, "2b": lazy_2b, "4b": lazy_4b, "8b": lazy_8b, "4b-a0.5b": lazy_4b_a0_5b}


def build(preset: str, **overrides) -> ModelConfig:
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; known: {', '.join(PRESETS)}")
    return PRESETS[preset](**overrides)
