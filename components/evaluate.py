"""`evaluate`: offline Recall/HR/NDCG@K with full ranking through trie-constrained beam search.

Leak-free daily protocol (chronological next-day, `evaluate.protocol: next_day`, the default):
  evaluate(D) scores the newest model trained strictly before D (of the latest earlier date with a model,
  the most post-trained directory with _SUCCESS: rl > sft > pretrain, declared as an external input so the
  contract hashes it) on day D, which that model never saw: one request per user with the context of the user's first
  impression of D (history strictly before D, features(D)), truth = every item the user engaged with
  positively on D. Ranking uses today's trie (tokenize(D)), so items that appeared on D can be recommended;
  their share is the cold-start share. When no earlier model exists, it evaluates pretrain(D) on D (which saw
  D's impressions: optimistic) and says so: tag onerec.eval_same_day=true, metric same_day=1.
  If the model was trained for another codebook, today's SIDs mean something else to it, so the trie and SID
  table of the model's own date are used instead (tag onerec.eval_trie) and today's new items are not ranked.
Leave-one-out (`protocol: loo`, TIGER's Amazon protocol): each user's last positive sample of day D is held
  out and ranked given its context (onerec.evaluation.leave_one_out); benchmarks call the same library.
The current champion (the `registry:` section's champion alias of its registered model), when
there is one, is evaluated on the same requests; its version is an external input (a moved alias re-evaluates).
Outputs: metrics.json (every metric, both models), comparison.md; MLflow: metrics, the comparison as
mlflow.log_table (evaluate/comparison.json) and the markdown table.
Options: onerec.config.EvaluateConfig. Metrics: onerec.evaluation (recall/hr/ndcg/coverage/cold_share/
cluster_density @ {1,5,10,50}, invalid rates).
"""
from __future__ import annotations

import json

from components.common import EvaluateConfig, champion, load_model, stage_config
from onerec.errors import BadInput

PROTOCOLS = ("next_day", "loo")


MODEL_STAGES = ("rl", "sft", "pretrain")   # the newest post-trained model of a date first


def model_source(ctx):
    """(stage dir of the evaluated model, same_day): the newest date strictly before D with a model, and of that
    date the most post-trained one (rl > sft > pretrain); else pretrain(D), the upstream."""
    prev = next(ctx.earlier_done(MODEL_STAGES, stage_config(ctx, EvaluateConfig).lookback_days), None)
    return (prev, False) if prev is not None else (ctx.dir("pretrain"), True)


def external_inputs(ctx) -> dict:
    src, same_day = model_source(ctx)
    inputs = {} if same_day else {"model": src.digest()}
    current = champion(ctx) if stage_config(ctx, EvaluateConfig).compare_champion else None
    if current is not None:
        inputs["champion"] = f"{current.name}/{current.version}"
    return inputs


def _requests(ctx, sids):
    import numpy as np
    import pyarrow as pa

    from onerec import evaluation

    s = stage_config(ctx, EvaluateConfig)
    protocol, targets = s.protocol, s.targets
    if protocol not in PROTOCOLS:
        raise BadInput(f"evaluate.protocol={protocol!r}; known: {', '.join(PROTOCOLS)}")
    if targets not in ("positive", "all"):
        raise BadInput(f"evaluate.targets={targets!r}; known: positive, all")
    samples = ctx.upstream("features").read_table("samples")
    split = evaluation.next_day if protocol == "next_day" else evaluation.leave_one_out
    contexts, truths = split(samples, targets)
    limit = int(s.max_users)
    if contexts.num_rows > limit:   # a stable, seeded subset of users: the same users every day
        users = contexts["user_id"].to_numpy()
        keep = np.sort(np.argsort((users.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)) % np.uint64(2**61 - 1),
                                  kind="stable")[:limit])
        contexts, truths = contexts.take(pa.array(keep)), [truths[i] for i in keep]
    if not truths:
        raise BadInput(f"evaluate {ctx.date}: no user has a {targets} target under protocol {protocol}")
    return contexts, truths


def _cold_items(ctx) -> set[int]:
    import pyarrow.compute as pc

    from onerec.schemas import day_start_ms

    items = ctx.upstream("ingest").read_table("items")
    days = int(stage_config(ctx, EvaluateConfig).cold_start_days)
    since = day_start_ms(ctx.date) - (days - 1) * 86_400_000
    return set(items.filter(pc.greater_equal(items["first_seen"], since))["item_id"].to_pylist())


def _fit_context_vocab(sids, cfg):
    """Context SIDs index the model's embedding tables: codes beyond them (a disambiguation index that grew
    after the model was trained) fall back to the last row instead of failing."""
    import numpy as np

    from onerec.samples import SidTable

    sizes = np.array(cfg.codebook_sizes[: sids.sids.shape[1]])
    return SidTable(sids.item_ids, np.minimum(sids.sids[:, : len(sizes)], sizes - 1))


def _score(model, trie, sids, contexts, truths, cold, s) -> dict:
    from onerec import evaluation

    return evaluation.evaluate(model, trie, _fit_context_vocab(sids, model.cfg), contexts, truths,
                               ks=tuple(s.ks), beam_size=int(s.beam_size), cold_items=cold,
                               batch_size=int(s.batch_size), check_unconstrained=bool(s.check_unconstrained))


def _tables(tokenize_dir):
    from onerec.item.trie import SidTrie
    from onerec.samples import SidTable

    return (SidTrie.from_bytes(tokenize_dir.read_bytes("trie.safetensors")),
            SidTable.from_table(tokenize_dir.read_table("sids")), json.loads(tokenize_dir.read_bytes("codebook.json")))


def run(ctx) -> dict:
    import mlflow
    import torch

    s = stage_config(ctx, EvaluateConfig)
    torch.manual_seed(0)
    ctx.upstream("pretrain")
    src, same_day = model_source(ctx)
    model, meta = load_model(src)
    trie, sids, codebook = _tables(ctx.upstream("tokenize"))
    trie_from = ctx.date
    if meta.get("codebook_digest") != codebook["digest"]:
        trie, sids, codebook = _tables(ctx.dir("tokenize", src.date))
        trie_from = src.date
    contexts, truths = _requests(ctx, sids)
    cold = _cold_items(ctx)
    evaluated = f"{src.pipeline}/{src.date}/{src.stage}"
    mlflow.set_tags({"onerec.eval_model": evaluated, "onerec.eval_same_day": str(same_day).lower(),
                     "onerec.eval_trie": f"tokenize {trie_from}", "onerec.eval_protocol": s.protocol})
    metrics = _score(model, trie, sids, contexts, truths, cold, s)

    current, champion_metrics = (champion(ctx) if s.compare_champion else None), {}
    if current is not None:
        from onerec import model_registry

        bundle = model_registry.load_version(current, tracking_uri=ctx.config["mlflow"]["tracking_uri"])
        same_codebook = bundle.codebook.get("digest") == codebook["digest"]
        c_trie, c_sids = (trie, sids) if same_codebook else (bundle.trie, bundle.sids)
        champion_metrics = _score(bundle.model, c_trie, c_sids, contexts, truths, cold, s)
        mlflow.set_tag("onerec.eval_champion", f"{current.name}/{current.version}")

    rows = _comparison(metrics, champion_metrics)
    table = {"metric": [r[0] for r in rows], "evaluated": [r[1] for r in rows],
             "champion": [r[2] for r in rows], "delta": [r[3] for r in rows]}
    markdown = _markdown(rows, evaluated, current)
    mlflow.log_table(data=table, artifact_file="evaluate/comparison.json")
    mlflow.log_text(markdown, "evaluate/comparison.md")
    ctx.out.write_json("metrics.json", {"evaluated_model": evaluated, "same_day": same_day, "trie_from": trie_from,
                                        "metrics": metrics, "champion": None if current is None else
                                        {"version": f"{current.name}/{current.version}", "metrics": champion_metrics}})
    ctx.out.write_bytes("comparison.md", markdown.encode())
    out = {**metrics, "same_day": int(same_day), "cold_items": len(cold), "evaluated_model": evaluated}
    out.update({f"champion_{k}": v for k, v in champion_metrics.items()})
    return out


def _comparison(metrics: dict, champion: dict) -> list[tuple]:
    rows = []
    for k, v in metrics.items():
        c = champion.get(k)
        rows.append((k, round(float(v), 6), None if c is None else round(float(c), 6),
                     None if c is None else round(float(v) - float(c), 6)))
    return rows


def _markdown(rows, evaluated: str, champion) -> str:
    name = "champion" if champion is None else f"champion ({champion.name}/{champion.version})"
    lines = [f"| metric | evaluated ({evaluated}) | {name} | delta |", "|---|---|---|---|"]
    fmt = lambda x: "-" if x is None else f"{x:.4f}"  # noqa: E731
    lines += [f"| {k} | {fmt(v)} | {fmt(c)} | {fmt(d)} |" for k, v, c, d in rows]
    return "\n".join(lines) + "\n"
