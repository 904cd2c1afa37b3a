"""`reward_model`: the OneRec-V1 multi-task reward model (onerec.reward_model) on the exposures up to day D.

Trains on the samples of the `history_days` ending at D (features; rows whose item has a semantic ID), warm
starting from the newest earlier reward model with the same architecture and codebook. Evaluation is leak-free
and next-day, like `evaluate`: the newest earlier reward model is scored on day D (`next_day_auc_<task>`,
`next_day_logloss_<task>`), i.e. every model's metrics are its next day's; the first day, with no earlier model,
reports a chronological holdout of D instead (the last `holdout` share of the day by time, not trained on; `holdout_*`).
Writes reward_model.safetensors + reward_model.json (configs, fusion weights, codebook digest) + metrics.json;
rl reads the P-score weights from reward_model.json, so they are part of this stage's result.
"""
from __future__ import annotations

import dataclasses
import json

from components.common import load_reward_model, training_days
from onerec.errors import BadInput

FILES = ("reward_model.safetensors", "reward_model.json")


def previous(ctx):
    """The newest earlier reward model: scored next-day on D (its AUC is the honest one)."""
    return next(ctx.earlier_done("reward_model", ctx.section.get("lookback_days", 30)), None)


def external_inputs(ctx) -> dict:
    inputs = {f"samples:{x}": ctx.dir("features", x).digest() for x in training_days(ctx) if x != ctx.date}
    prev = previous(ctx)
    return inputs if prev is None else {**inputs, "previous": prev.digest()}


def _configs(ctx, vocab):
    from onerec import model as M
    from onerec.reward_model import RewardConfig

    s = ctx.section
    try:
        context = M.build(s.get("context", "small"), codebook_sizes=vocab, **(s.get("context_overrides") or {}))
        known = {f.name for f in dataclasses.fields(RewardConfig)}
        return context, RewardConfig(**{k: v for k, v in s.items() if k in known})
    except (TypeError, ValueError) as e:
        raise BadInput(f"reward_model config: {e}") from None


def run(ctx) -> dict:
    import mlflow
    import numpy as np
    import pyarrow as pa
    import torch
    from safetensors.torch import save as st_save
    from tqdm import tqdm

    from onerec import reward_model as R
    from onerec.samples import SidTable, with_known_target

    s = ctx.section
    tok = ctx.upstream("tokenize")
    codebook = json.loads(tok.read_bytes("codebook.json"))
    sids = SidTable.from_table(tok.read_table("sids"))
    context_cfg, rcfg = _configs(ctx, sids.vocab_sizes(codebook["sizes"]))
    samples = with_known_target(ctx.upstream("features").read_table("samples"), sids)   # D: scored next-day
    steps, batch_size, seed = int(s.get("steps", 300)), int(s.get("batch_size", 256)), int(s.get("seed", 0))
    if samples.num_rows < 2:
        raise BadInput(f"reward_model {ctx.date}: {samples.num_rows} samples with a semantic ID")
    torch.manual_seed(seed)
    model = R.RewardModel(context_cfg, rcfg)

    metrics, prev = {}, previous(ctx)
    if prev is not None:
        old, meta = load_reward_model(prev)
        if meta.get("codebook_digest") == codebook["digest"]:
            metrics.update({f"next_day_{k}": v for k, v in R.evaluate(old, samples, sids).items()})
            if meta["context_config"] == json.loads(json.dumps(dataclasses.asdict(context_cfg))) and \
                    meta["reward_config"] == json.loads(json.dumps(dataclasses.asdict(rcfg))):
                model.load_state_dict(old.state_dict())
                mlflow.set_tag("onerec.warm_start", f"{prev.pipeline}/{prev.date}")
    earlier = [with_known_target(ctx.dir("features", x).read_table("samples"), sids)
               for x in training_days(ctx) if x != ctx.date]
    train = pa.concat_tables([*earlier, samples]) if earlier else samples
    if prev is None:   # no earlier model to judge on D: hold out the end of D
        order = np.argsort(samples["ts"].to_numpy(), kind="stable")
        cut = int(len(order) * (1 - float(s.get("holdout", 0.1))))
        held = samples.take(pa.array(order[cut:]))
        train = pa.concat_tables([*earlier, samples.take(pa.array(order[:cut]))])

    bar = tqdm(total=steps, desc="reward_model")

    def on_step(step, loss, grad_norm, per_task):
        bar.update()
        if step % int(s.get("log_every", 20)) == 0 or step == steps:
            mlflow.log_metrics({"loss": loss, "grad_norm": grad_norm, **per_task}, step=step)

    emb_lr = s.get("embedding_lr")
    losses = R.train(model, train, sids, steps=steps, batch_size=batch_size, lr=float(s.get("lr", 1e-3)),
                     weight_decay=float(s.get("weight_decay", 0.01)),
                     embedding_lr=None if emb_lr is None else float(emb_lr), seed=seed, on_step=on_step)
    bar.close()
    if prev is None:
        metrics.update({f"holdout_{k}": v for k, v in R.evaluate(model, held, sids).items()})
    metrics = {k: v for k, v in metrics.items() if np.isfinite(v)}

    ctx.out.write_bytes("reward_model.safetensors", st_save({k: v.contiguous() for k, v in model.state_dict().items()}))
    ctx.out.write_json("reward_model.json", {**model.meta(), "codebook_digest": codebook["digest"],
                                             "trained_on": ctx.date, "steps": steps})
    ctx.out.write_json("metrics.json", {"metrics": metrics, "losses": losses})
    return {"final_loss": losses[-1], "train_samples": train.num_rows, **metrics}
