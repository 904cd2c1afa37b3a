"""The SID prefix trie: accepts exactly the assigned SIDs, steps beams, survives serialization."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from onerec.item.trie import SidTrie


@pytest.fixture(scope="module")
def assigned():
    rng = np.random.default_rng(0)
    sids = rng.integers(0, 6, size=(150, 3))
    return sids, np.arange(1000, 1150)


def test_accepts_exactly_the_assigned_sids(assigned):
    sids, ids = assigned
    trie = SidTrie.build(sids, ids)
    valid = {tuple(s) for s in sids.tolist()}
    for sid in itertools.product(range(7), repeat=3):
        assert trie.contains(sid) == (sid in valid)
    assert {tuple(s) for s in trie.sids().tolist()} == valid
    assert not trie.contains((0, 0)) and not trie.contains((0, 0, 0, 0))


def test_items_of_each_sid_including_shared_ones(assigned):
    sids, ids = assigned
    trie = SidTrie.build(sids, ids)
    for sid in {tuple(s) for s in sids.tolist()}:
        expected = sorted(ids[(sids == sid).all(1)].tolist())
        assert sorted(trie.items_of(sid).tolist()) == expected


def test_step_and_mask_agree_with_children(assigned):
    sids, ids = assigned
    trie = SidTrie.build(sids, ids)
    nodes = np.zeros(1, dtype=np.int64)
    for depth in range(3):
        node = int(nodes[0])
        tokens, children = trie.children(depth, node)
        mask = trie.mask(depth, np.array([node]), 7)[0]
        assert sorted(np.flatnonzero(mask).tolist()) == sorted(tokens.tolist())
        stepped = trie.step(depth, np.full(7, node), np.arange(7))
        assert (stepped[mask] == children).all() and (stepped[~mask] == -1).all()
        nodes = children[:1]


def test_roundtrip_through_safetensors(assigned):
    sids, ids = assigned
    trie = SidTrie.build(sids, ids)
    back = SidTrie.from_bytes(trie.to_bytes())
    assert (back.sids() == trie.sids()).all()
    assert all(sorted(back.items_of(s).tolist()) == sorted(trie.items_of(s).tolist()) for s in sids[:20].tolist())
