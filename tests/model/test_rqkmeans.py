"""RQ-KMeans semantic IDs: reference equality with faiss, balance, determinism, collisions, serialization."""
from __future__ import annotations

import faiss
import numpy as np
import pytest

from onerec.item import metrics, rqkmeans as rq


def mixture(n=3000, d=16, k=40, seed=0, skew=True):
    """Gaussian mixture with Zipf-like component weights: plain k-means makes very unequal clusters."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d)) * 3
    w = 1.0 / np.arange(1, k + 1) ** (1.2 if skew else 0)
    comp = rng.choice(k, size=n, p=w / w.sum())
    return (centres[comp] + rng.normal(size=(n, d))).astype(np.float32)


def test_lloyd_equals_faiss_kmeans_from_the_same_start():
    x = mixture(skew=False)
    init = x[np.random.default_rng(1).choice(len(x), 20, replace=False)]
    km = faiss.Kmeans(x.shape[1], 20, niter=8, max_points_per_centroid=10**6, seed=1)
    km.train(x, init_centroids=init)
    ours, _ = rq.lloyd(x, init, 8, search="exact")
    np.testing.assert_allclose(ours, km.centroids, atol=1e-4)


def test_neighbour_search_with_all_centroids_is_the_exact_search():
    x = mixture(n=1000)
    c = x[:30].copy()
    codes = rq.exact_search(x, c, 1)[1][:, 0]
    D1, I1 = rq.exact_search(x, c, 5)
    D2, I2 = rq.neighbour_search(x, codes, c, 5, neighbours=30)
    assert (I1 == I2).all()
    np.testing.assert_allclose(D1, D2, rtol=1e-4, atol=1e-3)


def test_graph_search_fits_as_well_as_exact_search():
    x = mixture(n=4000, d=16, k=60)
    errs = {}
    for search in ("exact", "graph"):
        _, _, st = rq.fit(x, rq.RQConfig(levels=1, codebook_size=64, balanced=True, search=search, progress=False))
        errs[search] = st["residual_error"][0]
    assert errs["graph"] <= errs["exact"] * 1.05


def test_balanced_assign_respects_capacity_and_is_nearest_when_unconstrained():
    x = mixture(n=2000)
    c = x[np.random.default_rng(0).choice(len(x), 25, replace=False)]
    D, I = rq.exact_search(x, c, 8)
    codes = rq.balanced_assign(x, c, 84, D, I)                   # ceil(2000/25) = 80, 5% slack
    assert (codes >= 0).all() and np.bincount(codes, minlength=25).max() <= 84
    free = rq.balanced_assign(x, c, len(x), D, I)                # no constraint: every point's nearest
    assert (free == I[:, 0]).all()


@pytest.mark.parametrize("balanced", [True, False])
def test_fit_is_deterministic_with_a_seed(balanced):
    x = mixture()
    cfg = rq.RQConfig(levels=3, codebook_size=16, balanced=balanced, seed=3, progress=False)
    b1, c1, _ = rq.fit(x, cfg)
    b2, c2, _ = rq.fit(x, cfg)
    assert (c1 == c2).all() and all((p == q).all() for p, q in zip(b1.centroids, b2.centroids))
    _, c3, _ = rq.fit(x, rq.RQConfig(levels=3, codebook_size=16, balanced=balanced, seed=4, progress=False))
    assert not (c1 == c3).all()


def test_balanced_levels_are_balanced_and_plain_ones_are_not():
    x = mixture(n=4000)
    _, plain, _ = rq.fit(x, rq.RQConfig(levels=3, codebook_size=32, balanced=False, progress=False))
    _, bal, st = rq.fit(x, rq.RQConfig(levels=3, codebook_size=32, balanced=True, progress=False))
    for level in metrics.level_stats(bal, [32] * 3):
        assert level["max_over_mean"] <= 1.1 and level["utilization"] == 1.0
    assert metrics.level_stats(plain, [32] * 3)[0]["max_over_mean"] > 2
    assert st["residual_error"] == sorted(st["residual_error"], reverse=True)   # each level explains more


def test_every_item_gets_exactly_one_sid_and_codes_match_frozen_encoding_when_plain():
    x = mixture(n=1500)
    books, codes, _ = rq.fit(x, rq.RQConfig(levels=3, codebook_size=16, balanced=False, progress=False))
    assert codes.shape == (1500, 3) and (codes >= 0).all() and (codes < 16).all()
    again, _ = books.encode(x)                                   # plain codes are the nearest codes
    assert (again == codes).all()


def test_small_catalog_reduces_the_codebook_with_a_warning():
    with pytest.warns(UserWarning, match="small for codebooks"):
        sizes = rq.effective_sizes(500, rq.RQConfig(codebook_size=8192))
    assert sizes == [50, 50, 50]


def test_codebooks_roundtrip_through_safetensors():
    x = mixture(n=800)
    books, codes, _ = rq.fit(x, rq.RQConfig(levels=2, codebook_size=8, progress=False))
    books.meta["space"] = "abc"
    back = rq.Codebooks.from_bytes(books.to_bytes())
    assert back.meta["space"] == "abc" and back.sizes == [8, 8]
    assert all((p == q).all() for p, q in zip(books.centroids, back.centroids))
    assert books.to_bytes() == back.to_bytes()                   # stable bytes -> stable digest


@pytest.fixture(scope="module")
def colliding():
    """300 items, 20 x 20 SIDs: lots of collisions to resolve, but room for every item."""
    x = mixture(n=300, d=8, k=10)
    books, codes, _ = rq.fit(x, rq.RQConfig(levels=2, codebook_size=20, balanced=True, progress=False))
    assert metrics.collisions(codes)["collision_rate"] > 0.3
    return x, books, codes


def test_reassign_makes_sids_unique_and_moves_only_the_colliding_items(colliding):
    x, books, codes = colliding
    sids = rq.resolve_collisions(codes, x, books, "reassign")
    assert sids.shape == codes.shape and len(np.unique(sids, axis=0)) == len(sids)
    # items alone on their code keep it
    _, inverse, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    alone = counts[inverse.ravel()] == 1
    assert (sids[alone] == codes[alone]).all()
    # of each colliding group exactly one item keeps the code: the closest to it
    err = ((x - books.decode(codes)) ** 2).sum(1)
    for g in np.flatnonzero(counts > 1)[:20]:
        members = np.flatnonzero(inverse.ravel() == g)
        keep = members[(sids[members] == codes[members]).all(1)]
        assert len(keep) == 1 and err[keep[0]] == err[members].min()


def test_reassign_goes_up_a_level_when_a_prefix_is_full():
    # 2 levels of 2 codes: 4 SIDs; five items on one code cannot all fit: the fifth must fail,
    # four must spread over all four SIDs.
    books = rq.Codebooks([np.array([[0.0, 0.0], [10.0, 0.0]], np.float32), np.array([[0.0, 0.0], [0.0, 1.0]], np.float32)])
    x = np.zeros((4, 2), np.float32)
    codes = np.zeros((4, 2), np.int64)
    sids = rq.resolve_collisions(codes, x, books, "reassign")
    assert {tuple(s) for s in sids} == {(0, 0), (0, 1), (1, 0), (1, 1)}
    with pytest.raises(ValueError, match="every semantic ID is taken"):
        rq.resolve_collisions(np.zeros((5, 2), np.int64), np.zeros((5, 2), np.float32), books, "reassign")


def test_extra_level_numbers_the_items_of_each_code(colliding):
    x, books, codes = colliding
    sids = rq.resolve_collisions(codes, x, books, "extra_level")
    assert sids.shape == (len(codes), 3) and (sids[:, :2] == codes).all()
    assert len(np.unique(sids, axis=0)) == len(sids)
    _, inverse, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    for g in range(len(counts)):
        assert sorted(sids[inverse.ravel() == g, 2]) == list(range(counts[g]))


def test_none_keeps_collisions(colliding):
    x, books, codes = colliding
    assert (rq.resolve_collisions(codes, x, books, "none") == codes).all()


@pytest.mark.parametrize("mode", ["reassign", "extra_level"])
def test_new_items_never_take_an_existing_sid(colliding, mode):
    x, books, codes = colliding
    old = rq.resolve_collisions(codes[:200], x[:200], books, mode)
    taken = rq.sid_keys(old[:, :2], books.sizes)
    extra = rq.extra_level_state(old, books.sizes) if mode == "extra_level" else None
    new = rq.resolve_collisions(codes[200:], x[200:], books, mode, taken=taken, extra_taken=extra)
    both = np.concatenate([old, new])
    assert len(np.unique(both, axis=0)) == len(both)
