"""Content-hash cache of encoder outputs in the artifact store: a daily run encodes only new or changed items.

Layout: `<root>/shared/embed_cache/<encoder fingerprint>/<shard digest>.parquet`, columns `key` (hex
content hash) and `vector` (list<float32>). Every run that encoded something adds one shard named by
the digest of its bytes, so writing is atomic and idempotent on a local disk and on S3 alike; when
there are more than `max_shards`, they are merged into one (the merged shard is written before the
old ones are deleted, so a concurrent reader at worst misses some hits and re-encodes them).
The cache is a memo, not an input: a hit returns what the same encoder computes for the same
content, so it is not part of a stage's input digests.
"""
from __future__ import annotations

import hashlib
import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from onerec.item.vectors import from_arrow, to_arrow
from onerec.store import Store, sha256, table_to_parquet

PREFIX = "shared/embed_cache"


def content_key(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(repr(p).encode())
        h.update(b"\x00")
    return h.hexdigest()[:32]


class EmbeddingCache:
    def __init__(self, store: Store, fingerprint: str, max_shards: int = 32):
        self.store, self.prefix, self.max_shards = store, f"{PREFIX}/{fingerprint}", max_shards
        self.shards = [k for k in store.list(self.prefix) if k.endswith(".parquet")]
        self.vectors: dict[str, np.ndarray] = {}
        for key in self.shards:
            t = pq.read_table(io.BytesIO(store.read_bytes(key)))
            if t.num_rows:
                self.vectors.update(zip(t["key"].to_pylist(), from_arrow(t["vector"], key)))

    def get(self, keys: list[str]) -> tuple[dict, list[str]]:
        """(hits {key: vector}, missing keys in first-seen order)."""
        hits, missing, seen = {}, [], set()
        for k in keys:
            if k in self.vectors:
                hits[k] = self.vectors[k]
            elif k not in seen:
                seen.add(k)
                missing.append(k)
        return hits, missing

    def put(self, vectors: dict[str, np.ndarray]) -> int:
        """Store new vectors as one shard; returns how many were added."""
        new = {k: v for k, v in vectors.items() if k not in self.vectors}
        if not new:
            return 0
        self.vectors.update(new)
        self._write(new)
        if len(self.shards) > self.max_shards:
            old = list(self.shards)
            self.shards = []
            self._write(self.vectors)
            for key in old:
                if key not in self.shards:
                    self.store.delete(key)
        return len(new)

    def _write(self, vectors: dict) -> None:
        keys = sorted(vectors)
        table = pa.table({"key": pa.array(keys, pa.string()),
                          "vector": to_arrow(np.stack([vectors[k] for k in keys]))})
        data = table_to_parquet(table)
        key = f"{self.prefix}/{sha256(data)[:32]}.parquet"
        self.store.write_bytes(key, data)
        self.shards.append(key)
