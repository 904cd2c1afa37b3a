"""`tokenize`: RQ-KMeans semantic IDs for the catalog that stay stable day to day.

Outputs:
  sids.parquet       item_id int64, sid list<int32> (L tokens; L+1 with collision=extra_level)
  sid_items.parquet  sid, item_ids list<int64> (one item per SID unless collision=none)
  trie.safetensors   prefix trie of all SIDs for constrained decoding (onerec.item.trie)
  codebook.json      the codebooks used (digest, store key, sizes), the embedding space, fit or assign
  remap.parquet      only after a refit over earlier SIDs: item_id, old_sid, new_sid
Codebooks are versioned by content digest at `<root>/shared/codebooks/<digest>/codebooks.safetensors`.
Daily: the previous run's SIDs are kept for every item and new items are assigned with its frozen
codebooks. A refit (bootstrap pipeline, `tokenize.refit`, no previous run, or a changed embedding
space or tokenizer config, which would make the frozen codebooks meaningless) fits new codebooks on
the whole catalog and writes the old->new remap.
"""
from __future__ import annotations

import json

import numpy as np

from onerec.errors import BadInput
from onerec.store import StageDir, sha256

CODEBOOKS = "shared/codebooks"
NOT_IDENTITY = {"refit", "lookback_days", "search", "candidates"}   # settings that do not define the SIDs' meaning


def _previous(ctx) -> StageDir | None:
    from onerec.item.history import previous_run

    return previous_run(ctx.store, ctx.pipeline, "tokenize", ctx.date, int(ctx.section.get("lookback_days", 60)))


def external_inputs(ctx) -> dict:
    prev = _previous(ctx)
    return {"previous": f"{prev.pipeline}/{prev.date}:{prev.digest()}"} if prev is not None else {}


def _identity(section: dict) -> dict:
    return json.loads(json.dumps({k: v for k, v in section.items() if k not in NOT_IDENTITY}, sort_keys=True, default=str))


def run(ctx) -> dict:
    import mlflow

    from onerec.item import metrics as sid_metrics
    from onerec.item import rqkmeans
    from onerec.item.trie import SidTrie

    cfg = rqkmeans.RQConfig.from_dict(ctx.section)
    cfg.sizes(), rqkmeans.use_graph(cfg.search, 2)     # a bad config fails before any work (exit 2)
    mode = ctx.section.get("collision", "reassign")
    if mode not in rqkmeans.COLLISION_MODES:
        raise BadInput(f"tokenize.collision={mode!r}; known: {', '.join(rqkmeans.COLLISION_MODES)}")
    item_ids, x, space = _read_vectors(ctx)
    old_ids, old_sids, books, reason = _frozen(ctx, space)

    if books is None:       # fit: every item gets a fresh SID
        books, codes, _ = rqkmeans.fit(x, cfg)
        books.meta.update({"space": space, "fitted_on": f"{ctx.pipeline}/{ctx.date}"})
        ids, sids = item_ids, rqkmeans.resolve_collisions(codes, x, books, mode)
        native, n_new = sid_metrics.collisions(codes), len(item_ids)
    else:                   # assign: existing SIDs kept, new items coded with the frozen codebooks
        ids, sids, native, n_new = _assign_new(item_ids, x, old_ids, old_sids, books, mode)
    refit = reason is not None

    digest, key = _save_codebooks(ctx, books)
    ctx.out.write_table("sids", _sid_table(ids, sids))
    ctx.out.write_table("sid_items", _sid_items(ids, sids))
    ctx.out.write_bytes("trie.safetensors", SidTrie.build(sids, ids).to_bytes())
    remapped = 0
    if refit and old_ids is not None:   # old -> new for every item that had a SID
        remap = _remap(old_ids, old_sids, ids, sids)
        remapped = remap.num_rows
        ctx.out.write_table("remap", remap)
    ctx.out.write_json("codebook.json", {
        "digest": digest, "key": key, "uri": ctx.store.uri(key), "sizes": books.sizes, "levels": len(books.sizes),
        "dim": books.dim, "space": space, "fitted_on": books.meta.get("fitted_on"), "refit": refit,
        "refit_reason": reason, "collision": mode, "config": _identity(ctx.section),
    })

    metrics = _metrics(item_ids, x, ids, sids, books)
    metrics.update({"new_items": n_new, "refit": int(refit), "remapped": remapped,
                    "native_collision_rate": native["collision_rate"]})
    levels = len(books.sizes)
    current = np.isin(ids, item_ids)
    fig = sid_metrics.plot_cluster_sizes(sids[current, :levels], books.sizes,
                                         title=f"cluster sizes per level, {ctx.pipeline} {ctx.date}")
    mlflow.log_figure(fig, "tokenize/cluster_sizes.png")
    import matplotlib.pyplot as plt

    plt.close(fig)
    mlflow.log_dict({"levels": sid_metrics.level_stats(sids[current, :levels], books.sizes), "metrics": metrics},
                    "tokenize/sid_quality.json")
    mlflow.set_tags({"onerec.codebook_digest": digest[:16], "onerec.tokenize_refit": str(refit)})
    return metrics


def _frozen(ctx, space: str):
    """(old item ids, old SIDs, frozen codebooks, refit reason) from the previous run; codebooks None = refit."""
    from onerec.item import rqkmeans

    prev = _previous(ctx)
    if prev is None:
        return None, None, None, "no previous run"
    old = prev.read_table("sids")
    old_ids, old_sids = old["item_id"].to_numpy().astype("int64"), _sid_matrix(old["sid"])
    info = json.loads(prev.read_bytes("codebook.json"))
    reason = ("bootstrap" if ctx.pipeline == "bootstrap" else "tokenize.refit" if ctx.section.get("refit")
              else "embedding space changed" if info["space"] != space
              else "tokenize config changed" if info["config"] != _identity(ctx.section) else None)
    books = rqkmeans.Codebooks.from_bytes(ctx.store.read_bytes(info["key"])) if reason is None else None
    return old_ids, old_sids, books, reason


def _assign_new(item_ids, x, old_ids, old_sids, books, mode):
    """Keep every existing SID; code the items that have none; returns (ids, sids, native collisions, n new)."""
    from onerec.item import metrics as sid_metrics
    from onerec.item import rqkmeans

    levels = len(books.sizes)
    new = ~np.isin(item_ids, old_ids)
    codes, _ = books.encode(x[new])
    native = sid_metrics.collisions(np.concatenate([old_sids[:, :levels], codes]))   # new codes vs kept SIDs
    taken = rqkmeans.sid_keys(old_sids[:, :levels], books.sizes)
    extra = rqkmeans.extra_level_state(old_sids, books.sizes) if mode == "extra_level" else None
    new_sids = rqkmeans.resolve_collisions(codes, x[new], books, mode, taken=taken, extra_taken=extra)
    ids = np.concatenate([old_ids, item_ids[new]])
    sids = np.concatenate([old_sids, new_sids])
    order = np.argsort(ids, kind="stable")
    return ids[order], sids[order], native, int(new.sum())


def _save_codebooks(ctx, books) -> tuple[str, str]:
    """Content-addressed: the same codebooks are written once, a rerun writes nothing new."""
    data = books.to_bytes()
    digest = sha256(data)
    key = f"{CODEBOOKS}/{digest}/codebooks.safetensors"
    if not ctx.store.exists(key):
        ctx.store.write_bytes(key, data)
        ctx.store.write_bytes(f"{CODEBOOKS}/{digest}/meta.json", json.dumps(books.meta, indent=2, sort_keys=True).encode())
    return digest, key


def _metrics(item_ids, x, ids, sids, books) -> dict:
    """Code usage, entropy, cluster sizes and residual error per level, on today's catalog."""
    from onerec.item import metrics as sid_metrics

    levels = len(books.sizes)
    current = np.isin(ids, item_ids)
    cur = sids[current]
    rows = np.searchsorted(item_ids, ids[current])
    per_level = sid_metrics.summary(cur[:, :levels], books.sizes)
    coll = sid_metrics.collisions(cur)
    out = {"items": len(item_ids), "sids": len(ids), **{k: coll[k] for k in ("collision_rate", "colliding_items", "max_items_per_sid")}}
    out.update({k: v for k, v in per_level.items() if k.startswith("level")})
    out.update({f"level{i}_residual_error": r for i, r in enumerate(_residual_errors(x[rows], cur[:, :levels], books))})
    out.update({f"level{i}_codebook_size": k for i, k in enumerate(books.sizes)})
    return out


def _read_vectors(ctx):
    import pyarrow as pa

    from onerec.item.vectors import from_arrow

    embed = ctx.upstream("embed")
    try:
        table = embed.read_table("vectors")
        space = json.loads(embed.read_bytes("encoder.json"))["space"]
    except (pa.ArrowInvalid, OSError, ValueError, KeyError) as e:
        raise BadInput(f"embed output for {ctx.date} is unreadable ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    if not {"item_id", "vector"} <= set(table.column_names):
        raise BadInput(f"embed vectors for {ctx.date}: expected columns item_id, vector; got {table.column_names}")
    x = from_arrow(table["vector"], f"embed vectors for {ctx.date}")
    ids = table["item_id"].to_numpy()
    if len(np.unique(ids)) != len(ids):
        raise BadInput(f"embed vectors for {ctx.date}: duplicated item_id(s)")
    order = np.argsort(ids, kind="stable")
    return ids[order].astype(np.int64), x[order], space


def _sid_matrix(column):

    col = column.combine_chunks()
    lengths = np.asarray(col.value_lengths())
    return np.asarray(col.flatten()).astype(np.int64).reshape(len(col), int(lengths[0]) if len(col) else 0)


def _sid_table(ids, sids):
    import pyarrow as pa

    flat = pa.array(sids.astype("int32").ravel())
    offsets = pa.array(range(0, sids.size + 1, sids.shape[1]), pa.int32())
    return pa.table({"item_id": pa.array(ids, pa.int64()), "sid": pa.ListArray.from_arrays(offsets, flat)})


def _sid_items(ids, sids):
    import pyarrow as pa

    uniq, inverse = np.unique(sids, axis=0, return_inverse=True)
    inverse = inverse.ravel()
    order = np.argsort(inverse, kind="stable")
    counts = np.bincount(inverse, minlength=len(uniq))
    item_offsets = pa.array(np.r_[0, np.cumsum(counts)].astype(np.int32))
    sid_offsets = pa.array(range(0, uniq.size + 1, uniq.shape[1]), pa.int32())
    return pa.table({"sid": pa.ListArray.from_arrays(sid_offsets, pa.array(uniq.astype("int32").ravel())),
                     "item_ids": pa.ListArray.from_arrays(item_offsets, pa.array(ids[order], pa.int64()))})


def _remap(old_ids, old_sids, ids, sids):
    import pyarrow as pa

    both = np.isin(old_ids, ids)
    o_ids, o_sids = old_ids[both], old_sids[both]
    n_sids = sids[np.searchsorted(ids, o_ids)]

    def lists(m):
        return pa.ListArray.from_arrays(pa.array(range(0, m.size + 1, m.shape[1]), pa.int32()),
                                        pa.array(m.astype("int32").ravel()))
    return pa.table({"item_id": pa.array(o_ids, pa.int64()), "old_sid": lists(o_sids), "new_sid": lists(n_sids)})


def _residual_errors(x, codes, books) -> list[float]:
    """||x - reconstruction after level l||^2 / ||x||^2 for the items' actual SIDs (drift monitor)."""

    base = float((x.astype(np.float64) ** 2).sum(1).mean()) or 1.0
    r = x.astype(np.float64).copy()
    out = []
    for level, c in enumerate(books.centroids):
        r -= c[codes[:, level]]
        out.append(float((r ** 2).sum(1).mean()) / base)
    return out
