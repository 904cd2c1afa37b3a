"""A tiny RL world for objective tests: 40 items with distinct SIDs, a debug model, and logged rows whose
feedback the tests choose (q, dislike, source, gen_prob)."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from onerec import model as M
from onerec import posttrain, rl
from onerec.item.trie import SidTrie
from onerec.samples import SidTable
from onerec.serving import Event, _history_row

N_ITEMS = 40


def world(seed: int = 0, vocab: int = 16):
    """N_ITEMS items with distinct SIDs among vocab^3 codes (vocab=4: 40 of 64 SIDs exist)."""
    rng = np.random.default_rng(seed)
    codes = rng.permutation(vocab ** 3)[:N_ITEMS]
    sid = np.stack([codes // vocab ** 2, (codes // vocab) % vocab, codes % vocab], axis=1).astype(np.int64)
    items = np.arange(1, N_ITEMS + 1, dtype=np.int64)
    sids = SidTable(item_ids=items, sids=sid)
    trie = SidTrie.build(sid, items)
    torch.manual_seed(seed)
    return M.OneRec(M.debug(codebook_sizes=(vocab,) * 3)), sids, trie


def rows(n: int, seed: int = 0, *, q=None, dislike=None, source=None, gen_prob=None) -> pa.Table:
    rng = np.random.default_rng(seed)
    hist = [_history_row([Event(item_id=int(i)) for i in rng.integers(1, N_ITEMS + 1, size=4)]) for _ in range(n)]
    t = pa.concat_tables(hist)
    t = t.set_column(t.schema.get_field_index("item_id"), "item_id",
                     pa.array(rng.integers(1, N_ITEMS + 1, size=n), pa.int64()))
    t = t.set_column(t.schema.get_field_index("user_id"), "user_id", pa.array(np.arange(n), pa.int64()))
    cols = {"q": pa.array(rng.random(n) if q is None else q, pa.float64()),
            "dislike": pa.array(np.zeros(n, np.int64) if dislike is None else dislike, pa.int64()),
            "source": pa.array(["legacy"] * n if source is None else source),
            "gen_prob": pa.array(np.full(n, np.nan) if gen_prob is None else gen_prob, pa.float64()),
            "play_time_ms": pa.array(rng.integers(100, 20000, size=n), pa.int64())}
    for name, col in cols.items():
        t = t.append_column(name, col)
    return t


def objective(cfg: rl.RLConfig, seed: int = 0, reference: bool = True, reward=None, vocab: int = 16):
    import copy

    model, sids, trie = world(seed, vocab)
    ref = copy.deepcopy(model).eval().requires_grad_(False) if reference else None
    return posttrain.RLObjective(model, cfg, trie, sids, ref, reward), sids


def batch(obj, table, cfg):
    counts = posttrain.items_per_sid(obj.sids, 3)
    return posttrain.collate_rl(table, obj.policy.cfg, obj.sids, counts, cfg)


def bonus_for_even_items(items, first_seen_ms, now_ms):
    """A `module:function` business reward for tests: 0.5 for even item ids."""
    return np.where(np.asarray(items) % 2 == 0, 0.5, 0.0)
