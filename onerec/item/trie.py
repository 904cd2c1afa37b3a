"""Prefix trie of the assigned semantic IDs, for constrained decoding (only valid SIDs are generated).

Stored as flat arrays (CSR per depth), so a beam search steps thousands of beams with numpy indexing
and the trie serializes to safetensors (no pickle):
  tokens[j]   token of every node at depth j+1, grouped by parent and sorted by token;
  offsets[j]  the children of node i at depth j are tokens[j][offsets[j][i]:offsets[j][i+1]]
              (and their node ids at depth j+1 are that same range);
  items       the item ids of each leaf (depth L): items[leaf_offsets[i]:leaf_offsets[i+1]], so a SID
              shared by several items (collision handling off) maps to all of them.
The root is node 0 at depth 0.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class SidTrie:
    tokens: list[np.ndarray]
    offsets: list[np.ndarray]
    items: np.ndarray
    leaf_offsets: np.ndarray

    @property
    def depth(self) -> int:
        return len(self.tokens)

    @classmethod
    def build(cls, sids: np.ndarray, item_ids: np.ndarray) -> "SidTrie":
        sids = np.asarray(sids, dtype=np.int64)
        item_ids = np.asarray(item_ids, dtype=np.int64)
        if sids.ndim != 2 or len(sids) != len(item_ids) or len(sids) == 0:
            raise ValueError("need a non-empty (n, L) SID array and n item ids")
        n, L = sids.shape
        order = np.lexsort((item_ids,) + tuple(sids[:, j] for j in reversed(range(L))))
        s, items = sids[order], item_ids[order]
        # node id of each row's prefix at each depth: a new node starts where the prefix changes
        changed = np.zeros(n, dtype=bool)
        node = [np.zeros(n, dtype=np.int64)]                       # depth 0: the root
        for j in range(L):
            changed = changed | np.r_[True, s[1:, j] != s[:-1, j]]
            node.append(np.cumsum(changed) - 1)
        tokens, offsets = [], []
        for j in range(L):
            first = np.r_[True, node[j + 1][1:] != node[j + 1][:-1]]   # first row of every depth-(j+1) node
            tokens.append(s[first, j].astype(np.int32))
            parents = node[j][first]
            n_parents = int(node[j][-1]) + 1
            offsets.append(np.r_[0, np.cumsum(np.bincount(parents, minlength=n_parents))].astype(np.int64))
        leaves = node[L]
        leaf_offsets = np.r_[0, np.cumsum(np.bincount(leaves, minlength=int(leaves[-1]) + 1))].astype(np.int64)
        return cls(tokens, offsets, items, leaf_offsets)

    # -- stepping (what a beam search calls) --------------------------------------------------
    def children(self, depth: int, node: int) -> tuple[np.ndarray, np.ndarray]:
        """(tokens, child node ids) allowed after `node` at `depth`."""
        a, b = self.offsets[depth][node], self.offsets[depth][node + 1]
        return self.tokens[depth][a:b], np.arange(a, b)

    def step(self, depth: int, nodes: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        """Child node ids at depth+1 for (node, token) pairs; -1 where the token is not allowed."""
        keys = self._edge_keys(depth)
        vocab = self._vocab(depth)
        nodes, tokens = np.asarray(nodes, dtype=np.int64), np.asarray(tokens, dtype=np.int64)
        q = nodes * vocab + tokens
        pos = np.minimum(np.searchsorted(keys, q), len(keys) - 1)
        ok = (nodes >= 0) & (tokens >= 0) & (tokens < vocab) & (keys[pos] == q)
        return np.where(ok, pos, -1)

    def _vocab(self, depth: int) -> int:
        return int(self.tokens[depth].max()) + 1

    def _edge_keys(self, depth: int) -> np.ndarray:
        """parent * vocab + token of every edge: sorted, because children are grouped by parent and
        sorted by token, so one searchsorted finds any (node, token) edge."""
        cache = self.__dict__.setdefault("_keys", {})
        if depth not in cache:
            o = self.offsets[depth]
            parent = np.repeat(np.arange(len(o) - 1), np.diff(o))
            cache[depth] = parent * self._vocab(depth) + self.tokens[depth].astype(np.int64)
        return cache[depth]

    def mask(self, depth: int, nodes: np.ndarray, vocab: int) -> np.ndarray:
        """Boolean (len(nodes), vocab): which next tokens keep each beam on a valid SID."""
        nodes = np.asarray(nodes, dtype=np.int64)
        out = np.zeros((len(nodes), vocab), dtype=bool)
        a, b = self.offsets[depth][nodes], self.offsets[depth][nodes + 1]
        rows = np.repeat(np.arange(len(nodes)), b - a)
        idx = np.concatenate([np.arange(x, y) for x, y in zip(a, b)]) if len(nodes) else np.zeros(0, np.int64)
        out[rows, self.tokens[depth][idx]] = True
        return out

    # -- whole SIDs ---------------------------------------------------------------------------
    def node_of(self, prefix) -> int:
        node = 0
        for depth, t in enumerate(prefix):
            node = int(self.step(depth, np.array([node]), np.array([t]))[0])
            if node < 0:
                return -1
        return node

    def contains(self, sid) -> bool:
        return len(sid) == self.depth and self.node_of(sid) >= 0

    def items_of(self, sid) -> np.ndarray:
        leaf = self.node_of(sid) if len(sid) == self.depth else -1
        if leaf < 0:
            return np.zeros(0, dtype=np.int64)
        return self.items[self.leaf_offsets[leaf]:self.leaf_offsets[leaf + 1]]

    def sids(self) -> np.ndarray:
        """Every full path, in lexicographic order (one row per leaf)."""
        rows = self.tokens[-1][:, None].astype(np.int64)
        child_parent = [np.repeat(np.arange(len(o) - 1), np.diff(o)) for o in self.offsets]
        ids = np.arange(len(self.tokens[-1]))
        for depth in range(self.depth - 1, 0, -1):
            ids = child_parent[depth][ids]
            rows = np.concatenate([self.tokens[depth - 1][ids][:, None].astype(np.int64), rows], axis=1)
        return rows

    # -- storage ------------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        from safetensors.numpy import save

        tensors = {"items": self.items, "leaf_offsets": self.leaf_offsets}
        for j in range(self.depth):
            tensors[f"tokens_{j}"], tensors[f"offsets_{j}"] = self.tokens[j], self.offsets[j]
        return save(tensors, metadata={"depth": str(self.depth), "format": "onerec.sid_trie/1"})

    @classmethod
    def from_bytes(cls, data: bytes) -> "SidTrie":
        from safetensors.numpy import load

        t = load(data)
        depth = sum(1 for k in t if k.startswith("tokens_"))
        return cls([t[f"tokens_{j}"] for j in range(depth)], [t[f"offsets_{j}"] for j in range(depth)],
                   t["items"], t["leaf_offsets"])
