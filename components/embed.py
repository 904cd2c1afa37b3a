"""`embed`: item vectors for the day's catalog: content (text, image, tabular) + collaborative fusion.

Outputs:
  vectors.parquet          item_id int64, vector list<float32>: the fused vector (tokenize and features read it)
  content_vectors.parquet  item_id, vector: the content vector before fusion
  fusion.safetensors       the encoder state: projection weights, feature layout and fusion config (metadata)
  encoder.json             the state's digest ("space"), where it was fitted, pairs, alignment before/after
Refit (bootstrap pipeline, `embed.refit`, no previous state, or a different text model): the layout
and the projection are fitted on today's catalog and the window's co-engaged pairs. Daily: the
previous run's state is applied unchanged, so an unchanged item keeps its vector and tokenize's
frozen codebooks stay meaningful; only new or changed texts are encoded (content-hash cache).
"""
from __future__ import annotations

import datetime as dt
import json

from onerec.errors import BadInput
from onerec.store import StageDir, sha256

STATE = "fusion.safetensors"
FORMAT = "onerec.item_encoder/1"


def _refit_requested(ctx) -> bool:
    return ctx.pipeline == "bootstrap" or bool(ctx.section.get("refit"))


def _previous(ctx) -> StageDir | None:
    from onerec.item.history import previous_run

    if _refit_requested(ctx):
        return None
    return previous_run(ctx.store, ctx.pipeline, "embed", ctx.date, int(ctx.section.get("lookback_days", 60)))


def _window(ctx) -> list[StageDir]:
    """Finished ingest outputs of the days before D inside the fusion window (D itself is upstream)."""
    days = int((ctx.section.get("fusion") or {}).get("window_days", 7))
    d = dt.date.fromisoformat(ctx.date)
    found = []
    for back in range(1, days):
        day = (d - dt.timedelta(days=back)).isoformat()
        for pipeline in dict.fromkeys([ctx.pipeline, "daily", "bootstrap"]):
            candidate = StageDir(ctx.store, pipeline, day, "ingest")
            if candidate.is_done():
                found.append(candidate)
                break
    return found


def _text_encoder(ctx):
    from onerec.item.encoders import EmbedConfig, TextEncoder

    return TextEncoder.from_config(EmbedConfig.from_dict(ctx.section))


def external_inputs(ctx) -> dict:
    out = {f"impressions:{w.pipeline}/{w.date}": w.digest() for w in _window(ctx)}
    prev = _previous(ctx)
    if prev is not None:
        out["previous"] = f"{prev.pipeline}/{prev.date}:{prev.digest()}"
    out["text_model"] = _text_encoder(ctx).fingerprint
    return out


def run(ctx) -> dict:
    import mlflow

    from onerec.item import fusion
    from onerec.item.encoders import EmbedConfig, content_vectors, fit_layout
    from onerec.item.vectors import to_arrow

    cfg, fcfg = EmbedConfig.from_dict(ctx.section), fusion.FusionConfig.from_dict(ctx.section.get("fusion"))
    items, today, window = _read_inputs(ctx)
    encoder = _text_encoder(ctx)
    frozen, model, layout, reason = _frozen_state(ctx, encoder)
    refit = layout is None

    # content vectors: only new or changed texts are encoded (content-hash cache)
    wants_text = ("text" in items and items["text"].notna().any()) if refit else layout.text_model is not None
    text, encoded = _text(ctx, items, encoder) if wants_text else (None, 0)
    if refit:
        layout = fit_layout(items, cfg, text, encoder.fingerprint)
    content = content_vectors(items, layout, text)
    item_ids = items["item_id"].to_numpy(dtype="int64")

    # collaborative fusion: refit on the window's pairs, or apply the frozen projection
    pairs = _pairs(window, fcfg)
    train_pairs, held = fusion.split_pairs(pairs, fcfg.holdout, fcfg.seed) if refit else (pairs.iloc[:0], _pairs(today, fcfg))
    info = {}
    if refit and fcfg.enabled:
        model, info = fusion.train(content, *fusion.to_rows(train_pairs, item_ids), fcfg)
        _log_losses(mlflow, info["history"])
    fused = fusion.apply(model, content) if model is not None else _unit(content)
    ha, hb, _ = fusion.to_rows(held, item_ids)

    # save
    state = _state_bytes(model, layout, ctx.section, f"{ctx.pipeline}/{ctx.date}") if refit else frozen
    ctx.out.write_bytes(STATE, state)
    ctx.out.write_table("vectors", _table(item_ids, to_arrow(fused)))
    ctx.out.write_table("content_vectors", _table(item_ids, to_arrow(content)))
    metrics = {
        "items": len(items), "dim": int(fused.shape[1]), "content_dim": int(content.shape[1]),
        "text_items": int(items["text"].notna().sum()) if text is not None else 0, "text_encoded": int(encoded),
        "refit": int(refit), "pairs": len(pairs), "train_pairs": len(train_pairs), "held_pairs": int(len(ha)),
        # alignment: recall@10 of held-out co-engaged neighbours among the k-NN, before and after fusion
        "recall10_content": fusion.neighbour_recall(content, ha, hb, 10),
        "recall10_fused": fusion.neighbour_recall(fused, ha, hb, 10),
    }
    if info:
        metrics.update({"fusion_nce": info["final_nce"] if info["final_nce"] is not None else float("nan"),
                        "fusion_content_loss": info["final_content"], "fusion_contrastive": int(info["contrastive"])})
    space = sha256(state)
    ctx.out.write_json("encoder.json", {
        "space": space, "refit": refit, "refit_reason": reason if refit else None,
        "fitted_on": _metadata(state).get("fitted_on"), "blocks": layout.blocks,
        "text_model": encoder.ref if layout.text_model else None, "metrics": metrics,
    })
    mlflow.set_tag("onerec.embed_space", space[:16])
    return {k: (v if v == v else -1.0) for k, v in metrics.items()}   # NaN (no held-out pairs) -> -1


def _frozen_state(ctx, encoder):
    """(state bytes, projection, layout, refit reason) of the previous run; layout None = refit."""
    from onerec.item import fusion
    from onerec.item.encoders import FeatureLayout
    from onerec.item.vectors import safetensors_has_tensors

    prev = _previous(ctx)
    if prev is None:
        return None, None, None, "bootstrap" if _refit_requested(ctx) else "no previous state"
    state = prev.read_bytes(STATE)
    meta = _metadata(state)
    layout = FeatureLayout.from_json(meta["layout"])
    if layout.text_model is not None and layout.text_model != encoder.fingerprint:
        return None, None, None, "text model changed"
    if json.loads(meta["config"]) != _identity(ctx.section):
        return None, None, None, "embed config changed"
    return state, fusion.load(state)[0] if safetensors_has_tensors(state) else None, layout, None


def _text(ctx, items, encoder):
    from onerec.item.cache import EmbeddingCache
    from onerec.item.encoders import text_vectors

    use_cache = ctx.section.get("cache", True)
    cache = EmbeddingCache(ctx.store, encoder.fingerprint, int(ctx.section.get("cache_max_shards", 32))) if use_cache else None
    texts = items["text"].tolist() if "text" in items else [None] * len(items)
    return text_vectors(texts, encoder, cache)


def _pairs(impressions, fcfg):
    from onerec.item import fusion

    return fusion.mine_pairs(fusion.positives(impressions, fcfg.long_view), fcfg.pair_window, fcfg.popularity_alpha)


def _metadata(state: bytes) -> dict:
    from onerec.item.vectors import safetensors_metadata

    return safetensors_metadata(state)


def _read_inputs(ctx):
    import pandas as pd

    ingest = ctx.upstream("ingest")
    items = ingest.read_table("items").to_pandas()
    if len(items) == 0:
        raise BadInput(f"items for {ctx.date} are empty: nothing to embed")
    if items["item_id"].duplicated().any():
        raise BadInput(f"items for {ctx.date}: {int(items['item_id'].duplicated().sum())} duplicated item_id(s)")
    items = items.sort_values("item_id", kind="stable").reset_index(drop=True)
    cols = ["user_id", "item_id", "ts", "play_time_ms", "duration_ms", "click", "like", "follow", "comment",
            "forward", "dislike"]
    today = ingest.read_table("impressions").select(cols).to_pandas()
    window = pd.concat([today] + [w.read_table("impressions").select(cols).to_pandas() for w in _window(ctx)],
                       ignore_index=True)
    return items, today, window


def _identity(section: dict) -> dict:
    """The settings that define the encoder state; a frozen state is reused only while they are unchanged
    (how a run is executed or how far it looks back does not count; the text model counts by fingerprint)."""
    ignore = {"refit", "lookback_days", "cache", "cache_max_shards", "device", "text_batch_size", "text_model"}
    return json.loads(json.dumps({k: v for k, v in section.items() if k not in ignore}, sort_keys=True, default=str))


def _state_bytes(model, layout, section: dict, fitted_on: str) -> bytes:
    from onerec.item import fusion

    meta = {"format": FORMAT, "layout": layout.to_json(), "fitted_on": fitted_on,
            "config": json.dumps(_identity(section), sort_keys=True)}
    if model is None:
        from safetensors.numpy import save

        return save({}, metadata=meta)
    return fusion.save(model, meta)


def _unit(m):
    import numpy as np

    return (m / np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def _table(item_ids, vectors):
    import pyarrow as pa

    return pa.table({"item_id": pa.array(item_ids, pa.int64()), "vector": vectors})


def _log_losses(mlflow, history: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, values in history.items():
        if values:
            ax.plot(values, label=name, alpha=0.8)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("collaborative fusion")
    ax.legend()
    fig.tight_layout()
    mlflow.log_figure(fig, "embed/fusion_loss.png")
    plt.close(fig)
