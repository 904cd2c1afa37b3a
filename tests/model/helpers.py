"""Random but valid model inputs for unit tests."""
from __future__ import annotations

import torch

from onerec import model as M


def rand_batch(cfg: M.ModelConfig, B: int = 4, seed: int = 0, fill: float = 1.0) -> M.Batch:
    g = torch.Generator().manual_seed(seed)
    paths = {}
    for name, T in cfg.pathways:
        mask = torch.rand(B, T, generator=g) < fill
        paths[name] = M.Pathway(
            item=torch.randint(1, cfg.item_buckets, (B, T), generator=g) * mask,
            sid=torch.stack([torch.randint(0, n, (B, T), generator=g) for n in cfg.codebook_sizes], -1),
            feat=torch.randn(B, T, cfg.item_feat_dim, generator=g),
            mask=mask)
    target = torch.stack([torch.randint(0, n, (B,), generator=g) for n in cfg.codebook_sizes], -1)
    return M.Batch(torch.randn(B, cfg.user_feat_dim, generator=g), paths, target)
