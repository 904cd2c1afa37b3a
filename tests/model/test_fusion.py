"""Collaborative fusion: pair mining, the alignment metric, InfoNCE training on a planted problem."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from onerec.item import fusion


def imps(rows):
    cols = ["user_id", "item_id", "ts", "click", "like", "dislike", "play_time_ms", "duration_ms"]
    return pd.DataFrame(rows, columns=cols)


def test_positives_are_engagements_or_long_views_never_dislikes():
    df = imps([
        (1, 10, 1, 1, 0, 0, 100, 1000),    # click
        (1, 11, 2, 0, 0, 0, 900, 1000),    # long view (0.9 >= 0.8)
        (1, 12, 3, 0, 0, 0, 100, 1000),    # short view, no engagement
        (1, 13, 4, 1, 0, 1, 100, 1000),    # clicked but disliked
        (1, 14, 5, 0, 1, 0, None, None),   # like, no play time
    ])
    assert fusion.positives(df)["item_id"].tolist() == [10, 11, 14]


def test_pairs_follow_each_users_order_within_the_window_and_discount_popularity():
    events = pd.DataFrame({"user_id": [1, 1, 1, 2, 2, 3, 3],
                           "item_id": [5, 6, 7, 5, 6, 5, 8],
                           "ts": [1, 2, 3, 1, 2, 1, 2]})
    pairs = fusion.mine_pairs(events, pair_window=1, alpha=0.5).set_index(["a", "b"])
    assert set(pairs.index) == {(5, 6), (6, 7), (5, 8)}             # (5, 7) is two steps apart
    assert pairs.loc[(5, 6), "count"] == 2
    pop = {5: 3, 6: 2, 7: 1, 8: 1}
    for (a, b), row in pairs.iterrows():
        assert row["weight"] == pytest.approx(row["count"] / np.sqrt(pop[a] * pop[b]))
    wide = fusion.mine_pairs(events, pair_window=2)
    assert (5, 7) in set(zip(wide["a"], wide["b"]))


def test_neighbour_recall_on_hand_made_vectors():
    # items 0,1 identical, 2,3 identical, orthogonal groups: each item's nearest neighbour is its twin
    v = np.array([[1, 0], [1, 0], [0, 1], [0, 1]], dtype=np.float32)
    assert fusion.neighbour_recall(v, np.array([0, 2]), np.array([1, 3]), k=1) == 1.0
    assert fusion.neighbour_recall(v, np.array([0]), np.array([2]), k=1) == 0.0
    assert fusion.neighbour_recall(v, np.array([0]), np.array([2]), k=3) == 1.0   # found among the 3 others


def test_info_nce_masks_repeated_items_instead_of_pushing_them_apart():
    import torch

    z = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    ia, ib = torch.tensor([0, 0, 1, 2]), torch.tensor([5, 5, 6, 7])     # rows 0 and 1 are the same pair
    loss = fusion.info_nce(z, z.clone(), ia, ib, 0.1)
    assert torch.isfinite(loss)
    # with the duplicate masked, row 0's softmax has no competitor equal to its positive
    logits = z @ z.T / 0.1
    assert loss < torch.nn.functional.cross_entropy(logits, torch.arange(4)) + 1e-6


@pytest.fixture(scope="module")
def planted():
    """Content sees the true groups only weakly; co-engagement follows them: fusion must help."""
    rng = np.random.default_rng(0)
    n, groups, d = 300, 20, 32
    group = rng.integers(0, groups, n)
    signal = rng.normal(size=(groups, d))
    content = (0.4 * signal[group] + rng.normal(size=(n, d))).astype(np.float32)
    a = rng.integers(0, n, 6000)
    b = np.array([rng.choice(np.flatnonzero(group == group[i])) for i in a])
    keep = a != b
    pairs = pd.DataFrame({"a": np.minimum(a, b)[keep], "b": np.maximum(a, b)[keep]}).value_counts().rename("count").reset_index()
    pairs["weight"] = pairs["count"].astype(float)
    return content, pairs


def test_fusion_aligns_held_out_co_engaged_items_and_is_deterministic(planted):
    content, pairs = planted
    ids = np.arange(len(content))
    train, held = fusion.split_pairs(pairs, 0.2, seed=0)
    cfg = fusion.FusionConfig(dim=16, hidden=64, steps=200, batch_size=128, lr=3e-3, progress=False)
    model, info = fusion.train(content, *fusion.to_rows(train, ids), cfg)
    fused = fusion.apply(model, content)
    ha, hb, _ = fusion.to_rows(held, ids)
    before, after = fusion.neighbour_recall(content, ha, hb), fusion.neighbour_recall(fused, ha, hb)
    assert after > before + 0.15, (before, after)
    assert np.allclose(np.linalg.norm(fused, axis=1), 1, atol=1e-5) and info["contrastive"]
    again = fusion.apply(fusion.train(content, *fusion.to_rows(train, ids), cfg)[0], content)
    assert np.array_equal(fused, again)


def test_state_roundtrip_and_content_only_training_with_too_few_pairs(planted):
    content, pairs = planted
    cfg = fusion.FusionConfig(dim=8, hidden=16, steps=5, min_pairs=10**9, progress=False)
    model, info = fusion.train(content, *fusion.to_rows(pairs, np.arange(len(content))), cfg)
    assert not info["contrastive"] and info["final_nce"] is None
    back, meta = fusion.load(fusion.save(model, {"k": "v"}))
    assert meta == {"k": "v"}
    assert np.array_equal(fusion.apply(back, content), fusion.apply(model, content))
