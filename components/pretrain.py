"""`pretrain`: train the generative model on the day's newest-impression samples (OneRec-V2 Sec. 2).

Reads features(D) samples (bootstrap: the last `history_days` days) and tokenize(D) semantic IDs; writes
  model.safetensors   the weights (safetensors; nothing pickled)
  model.json          ModelConfig + the codebook digest the heads were trained for
  train.json          TrainConfig, losses, throughput, MFU
Daily continual training warm-starts from the newest earlier pretrain model of this pipeline (not the
registry's champion: pretraining stays one continuous line; `sft` can start from the champion) when it
was trained for the same codebook; a refit codebook changes what every
semantic ID means, so the model then starts from scratch and says so.
Checkpoints live in the job's scratch prefix (outside the stage directory, which every run resets) and
a killed run resumes from the newest complete one; they are removed once the weights are written.
"""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path

from components.common import load_model, loss_figure, prepare_files, train_config, training_days
from onerec.errors import BadInput

MODEL_FILES = ("model.safetensors", "model.json")


def warm_start_source(ctx):
    """The newest earlier pretrain model of this pipeline (see the module docstring)."""
    if not ctx.section.get("warm_start", True):
        return None
    return next(ctx.earlier_done("pretrain", ctx.section.get("warm_start_lookback_days", 30)), None)


def external_inputs(ctx) -> dict:
    inputs = {f"samples:{x}": ctx.dir("features", x).digest() for x in training_days(ctx) if x != ctx.date}
    src = warm_start_source(ctx)
    if src is not None:
        inputs["warm_start"] = src.digest()
    return inputs


def _model_config(ctx, vocab):
    from onerec import model as M

    s = ctx.section
    try:
        return M.build(s.get("model", "small"), arch=s.get("arch", "lazy"), codebook_sizes=vocab,
                       **(s.get("overrides") or {}))
    except (TypeError, ValueError) as e:
        raise BadInput(f"pretrain model config: {e}") from None


def run(ctx) -> dict:
    import mlflow
    import torch
    from safetensors.torch import save as st_save

    from components.contract import fault
    from onerec import model as M
    from onerec.samples import SidTable, collate
    from onerec.train import Checkpoints, ParquetStream, train

    tok = ctx.upstream("tokenize")
    ctx.upstream("features")
    codebook = json.loads(tok.read_bytes("codebook.json"))
    sids = SidTable.from_table(tok.read_table("sids"))
    vocab = sids.vocab_sizes(codebook["sizes"])
    mcfg, tcfg = _model_config(ctx, vocab), train_config(ctx)
    torch.manual_seed(tcfg.seed)
    model = M.OneRec(mcfg)

    src, warm = warm_start_source(ctx), "scratch"
    if src is not None:
        prev, meta = load_model(src)
        same_arch = meta["model_config"] == json.loads(json.dumps(dataclasses.asdict(mcfg)))  # tuples -> lists
        if meta.get("codebook_digest") == codebook["digest"] and same_arch:
            model.load_state_dict(prev.state_dict())
            warm = f"{src.pipeline}/{src.date}"
        else:
            mlflow.set_tag("onerec.warm_start_skipped", "codebook or architecture changed since " + src.date)

    with tempfile.TemporaryDirectory(prefix="onerec-pretrain-") as tmp:
        files, rows = prepare_files(ctx, sids, Path(tmp))
        if rows < tcfg.batch_size:
            raise BadInput(f"pretrain {ctx.date}: {rows} trainable samples cannot fill one batch of {tcfg.batch_size}")
        stream = ParquetStream(files, tcfg.batch_size, lambda t: collate(t, mcfg, sids), seed=tcfg.seed,
                               rank=int(os.environ.get("RANK", 0)), world=int(os.environ.get("WORLD_SIZE", 1)))
        ckpt = Checkpoints(ctx.store, ctx.scratch("checkpoints"), keep=tcfg.keep_checkpoints)
        mlflow.log_params({"model_preset": ctx.section.get("model", "small"), "arch": mcfg.arch,
                           "params": M.OneRec.num_params(model), "active_params": model.num_params(active=True),
                           "warm_start": warm, "train_samples": rows, "codebook_digest": codebook["digest"][:16]})

        def on_log(step, metrics):
            mlflow.log_metrics(metrics, step=step)
            fault("pretrain", f"step{step}")

        result = train(model, stream, tcfg, ckpt, flops_per_sample=M.train_flops(mcfg), on_log=on_log)

    ctx.out.write_bytes("model.safetensors", st_save({k: v.contiguous() for k, v in result["state_dict"].items()}))
    ctx.out.write_json("model.json", {"model_config": dataclasses.asdict(mcfg), "codebook_digest": codebook["digest"],
                                      "warm_start": warm, "trained_on": training_days(ctx)})
    ctx.out.write_json("train.json", {"train_config": dataclasses.asdict(tcfg), "losses": result["losses"],
                                      "resumed_from": result["resumed_from"], "samples": rows})
    mlflow.log_figure(loss_figure(result["losses"], ctx.date), "pretrain/loss.png")
    ckpt.clear()
    return {"final_loss": result["final_loss"], "steps": result["steps"], "train_samples": rows,
            "params": model.num_params(), "resumed_from_step": result["resumed_from"] or 0,
            "warm_start": warm}
