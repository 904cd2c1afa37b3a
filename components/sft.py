"""`sft`: supervised fine-tuning of the day's pretrained model on day D's exposures (generation loss).

Starts from pretrain(D) (`sft.init: pretrain`, the default) or from the registry champion (`init: champion`,
when it was trained for today's codebook; otherwise pretrain(D), tagged). Optional RSFT (OneRec-V1): drop
the bottom `rsft.drop` share (0.5 in V1) of the day's sessions ranked by total play time.
Writes the same files as pretrain (model.safetensors, model.json, train.json), so every reader of a model
directory (evaluate, the registry bundle, rl) takes it as is. Checkpoints and resume as in pretrain.
"""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path

from onerec.errors import BadInput


def _champion(ctx):
    if ctx.section.get("init", "pretrain") != "champion":
        return None
    from components.common import champion

    return champion(ctx)


def external_inputs(ctx) -> dict:
    champion = _champion(ctx)
    return {} if champion is None else {"champion": f"{champion.name}/{champion.version}"}


def init_model(ctx, codebook):
    """(model, model.json meta, source name): pretrain(D), or the champion when asked for and compatible."""
    import mlflow

    from components.common import load_model

    champion = _champion(ctx)
    if champion is not None:
        from onerec import model_registry

        bundle = model_registry.load_version(champion, tracking_uri=ctx.config["mlflow"]["tracking_uri"])
        if bundle.codebook.get("digest") == codebook["digest"]:
            return bundle.model.train(), bundle.meta, f"champion {champion.name}/{champion.version}"
        mlflow.set_tag("onerec.sft_champion_skipped", "champion was trained for another codebook")
    model, meta = load_model(ctx.upstream("pretrain"))
    return model, meta, f"pretrain {ctx.date}"


def run(ctx) -> dict:
    import mlflow
    import torch
    from safetensors.torch import save as st_save

    from components.contract import fault
    from components.common import loss_figure as _loss_figure, prepare_files, training_days as _days
    from onerec import model as M
    from onerec.posttrain import rsft_filter
    from onerec.samples import SidTable, collate
    from onerec.train import Checkpoints, ParquetStream, train

    from components.common import train_config

    tok = ctx.upstream("tokenize")
    ctx.upstream("features")
    codebook = json.loads(tok.read_bytes("codebook.json"))
    sids = SidTable.from_table(tok.read_table("sids"))
    tcfg = train_config(ctx)
    torch.manual_seed(tcfg.seed)
    model, meta, source = init_model(ctx, codebook)
    mcfg = model.cfg
    rsft = dict(ctx.section.get("rsft") or {})
    drop = float(rsft.get("drop", 0.0)) if rsft.get("enabled", False) else 0.0
    if not 0 <= drop < 1:
        raise BadInput(f"sft.rsft.drop must be in [0, 1), got {drop}")

    with tempfile.TemporaryDirectory(prefix="onerec-sft-") as tmp:
        files, rows = prepare_files(ctx, sids, Path(tmp))
        rsft_stats = {}
        if drop and files:
            files, rsft_stats = rsft_filter(files, drop, rsft.get("session_key", "request_id"))
            rows = rsft_stats["rsft_rows_kept"]
        if rows < tcfg.batch_size:
            raise BadInput(f"sft {ctx.date}: {rows} samples cannot fill one batch of {tcfg.batch_size}")
        stream = ParquetStream(files, tcfg.batch_size, lambda t: collate(t, mcfg, sids), seed=tcfg.seed,
                               rank=int(os.environ.get("RANK", 0)), world=int(os.environ.get("WORLD_SIZE", 1)))
        ckpt = Checkpoints(ctx.store, ctx.scratch("checkpoints"), keep=tcfg.keep_checkpoints)
        mlflow.log_params({"init": source, "train_samples": rows, "rsft_drop": drop, **rsft_stats})

        def on_log(step, metrics):
            mlflow.log_metrics(metrics, step=step)
            fault("sft", f"step{step}")

        result = train(model, stream, tcfg, ckpt, flops_per_sample=M.train_flops(mcfg), on_log=on_log)

    ctx.out.write_bytes("model.safetensors", st_save({k: v.contiguous() for k, v in result["state_dict"].items()}))
    ctx.out.write_json("model.json", {**meta, "model_config": dataclasses.asdict(mcfg),
                                      "codebook_digest": codebook["digest"], "init": source,
                                      "trained_on": _days(ctx), "post_training": "sft"})
    ctx.out.write_json("train.json", {"train_config": dataclasses.asdict(tcfg), "losses": result["losses"],
                                      "resumed_from": result["resumed_from"], "samples": rows, **rsft_stats})
    mlflow.log_figure(_loss_figure(result["losses"], ctx.date), "sft/loss.png")
    ckpt.clear()
    return {"final_loss": result["final_loss"], "steps": result["steps"], "train_samples": rows,
            "resumed_from_step": result["resumed_from"] or 0, "init": source, **rsft_stats}
