"""`rl`: reinforcement learning from sft(D) with the algorithm and sample source chosen in config.

Algorithms (onerec.rl): gbpo (OneRec-V2, default), ecpo (OneRec-V1), grpo (PPO ratio clipping), dpo (OneRec's
iterative preference alignment on reward-model pairs from beam search). Sources: `feedback` (day D's logged
exposures with duration-aware advantages), `reward_model` (on-policy rollouts scored by reward_model(D)),
`hybrid` (both, independent samples: V2 Table 7). The RL loss is mixed with the generation loss on the logged
samples (`gen_loss_weight`) to stay near the SFT model; sft(D) is also DPO's frozen reference.
The loop is onerec.train's (checkpoints in scratch, exact resume); MLflow gets the loss, gradient norm,
advantage statistics, filtered share, per-source sample counts and a plot of them. Writes model.safetensors,
model.json, train.json like pretrain/sft.
"""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path

from onerec.errors import BadInput


def rl_config(ctx):
    from onerec.rl import RLConfig

    s = {k: v for k, v in ctx.section.items() if k not in ("train", "history_days", "samples")}
    known = {f.name for f in dataclasses.fields(RLConfig)}
    unknown = set(s) - known
    if unknown:
        raise BadInput(f"unknown rl option(s) {sorted(unknown)}; known: {sorted(known | {'train', 'history_days'})}")
    try:
        return RLConfig(**s)
    except (TypeError, ValueError) as e:
        raise BadInput(str(e)) from None


def _first_seen(ctx) -> dict:
    items = ctx.upstream("ingest").read_table("items")
    return dict(zip(items["item_id"].to_pylist(), (float(x) for x in items["first_seen"].to_numpy())))


def run(ctx) -> dict:
    import mlflow
    import pyarrow.parquet as pq
    import torch
    from safetensors.torch import save as st_save

    from components.common import load_model, load_reward_model, prepare_files, train_config
    from components.contract import fault
    from components.common import training_days as _days
    from onerec.item.trie import SidTrie
    from onerec.posttrain import RLObjective, collate_rl, hold_out_newest, items_per_sid
    from onerec.samples import SidTable
    from onerec.train import Checkpoints, ParquetStream, train

    tok = ctx.upstream("tokenize")
    ctx.upstream("features")
    codebook = json.loads(tok.read_bytes("codebook.json"))
    sids = SidTable.from_table(tok.read_table("sids"))
    trie = SidTrie.from_bytes(tok.read_bytes("trie.safetensors"))
    rcfg, tcfg = rl_config(ctx), train_config(ctx)
    torch.manual_seed(tcfg.seed)
    policy, meta = load_model(ctx.upstream("sft"))
    reference, _ = load_model(ctx.upstream("sft"))
    reference.eval().requires_grad_(False)
    if meta.get("codebook_digest") != codebook["digest"]:
        raise BadInput(f"rl {ctx.date}: sft model was trained for another codebook than tokenize({ctx.date})")
    reward, rm_meta = load_reward_model(ctx.upstream("reward_model"))
    reward.requires_grad_(False)
    uses_rm = rcfg.needs_reward_model
    if uses_rm and rm_meta.get("codebook_digest") != codebook["digest"]:
        raise BadInput(f"rl {ctx.date}: the reward model was trained for another codebook")
    mcfg = policy.cfg
    counts = items_per_sid(sids, len(mcfg.codebook_sizes))
    first_seen = _first_seen(ctx) if (rcfg.cold_start_bonus or rcfg.business_reward) else {}
    objective = RLObjective(policy, rcfg, trie, sids, reference, reward if uses_rm else None, first_seen)

    curves: dict[str, list] = {}
    with tempfile.TemporaryDirectory(prefix="onerec-rl-") as tmp:
        files, rows = prepare_files(ctx, sids, Path(tmp))
        selection = None
        if rcfg.select_every:
            files, held = hold_out_newest(files, rcfg.validation_share, rcfg.validation_rows)
            rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
            selection = Selection(ctx, policy, trie, sids, held, rcfg)
        if rows < tcfg.batch_size:
            raise BadInput(f"rl {ctx.date}: {rows} samples cannot fill one batch of {tcfg.batch_size}")
        stream = ParquetStream(files, tcfg.batch_size, lambda t: collate_rl(t, mcfg, sids, counts, rcfg, first_seen),
                               seed=tcfg.seed, rank=int(os.environ.get("RANK", 0)),
                               world=int(os.environ.get("WORLD_SIZE", 1)))
        ckpt = Checkpoints(ctx.store, ctx.scratch("checkpoints"), keep=tcfg.keep_checkpoints)
        mlflow.log_params({"algorithm": rcfg.algorithm, "source": rcfg.source, "train_samples": rows,
                           "init": f"sft {ctx.date}"})

        def on_log(step, metrics):
            metrics = {**metrics, **objective.pop_stats()}
            mlflow.log_metrics(metrics, step=step)
            if selection is not None and step % rcfg.select_every == 0:
                selection.consider(step, policy.state_dict())
            for k, v in metrics.items():
                curves.setdefault(k, []).append((step, v))
            fault("rl", f"step{step}")

        result = train(objective, stream, tcfg, ckpt, on_log=on_log)

    state = {k.removeprefix("policy."): v.contiguous() for k, v in result["state_dict"].items()}
    picked = {}
    if selection is not None:
        selection.consider(result["steps"], state)
        state, picked = selection.best()
        mlflow.log_metrics({"selected_step": picked["selected_step"], "selected_score": picked["selected_score"]})
    ctx.out.write_bytes("model.safetensors", st_save(state))
    ctx.out.write_json("model.json", {**meta, "model_config": dataclasses.asdict(mcfg),
                                      "codebook_digest": codebook["digest"], "init": f"sft {ctx.date}",
                                      "trained_on": _days(ctx), "post_training": f"rl/{rcfg.algorithm}/{rcfg.source}"})
    ctx.out.write_json("train.json", {"train_config": dataclasses.asdict(tcfg), "rl_config": dataclasses.asdict(rcfg),
                                      "losses": result["losses"], "curves": curves,
                                      "resumed_from": result["resumed_from"], "samples": rows,
                                      "selection": None if selection is None else selection.history})
    mlflow.log_figure(_figure(curves, ctx.date, rcfg), "rl/curves.png")
    ckpt.clear()
    if selection is not None:
        selection.clear()
    last = {k: v[-1][1] for k, v in curves.items()}
    return {"final_loss": result["final_loss"], "steps": result["steps"], "train_samples": rows,
            "resumed_from_step": result["resumed_from"] or 0, "algorithm": rcfg.algorithm, "source": rcfg.source,
            **picked, **{k: last[k] for k in ("grad_norm", "gen_loss", "filtered_share", "adv_mean", "n_feedback", "served_share",
                                    "n_rollout", "n_groups", "n_dpo_pairs", "group_hit_share", "kl_ref", "rl_loss_feedback", "rl_loss_beam",
                                    "rl_loss_rollout", "rl_loss_dpo") if k in last}}


class Selection:
    """Checkpoint selection (rl.select_every): the SFT model (step 0) and every select_every-th step are scored on
    the held-out newest rows (onerec.posttrain.validation_score); the best weights so far live in the job's scratch
    prefix (safetensors + best.json), so a resumed run keeps what the killed one had found."""

    def __init__(self, ctx, policy, trie, sids, held, rcfg):
        self.ctx, self.policy, self.trie, self.sids, self.held, self.rcfg = ctx, policy, trie, sids, held, rcfg
        self.prefix = ctx.scratch("selection")
        self.history: list = []
        try:
            self.record = json.loads(ctx.store.read_bytes(f"{self.prefix}/best.json"))
            self.history = self.record.get("history", [])
        except Exception:   # no earlier attempt: start by scoring the SFT model itself
            self.record = None
            self.consider(0, policy.state_dict())

    def consider(self, step: int, state: dict) -> None:
        import copy

        from safetensors.torch import save as st_save

        from onerec.posttrain import validation_score

        if any(h["step"] == step for h in self.history):
            return
        probe = copy.deepcopy(self.policy)
        probe.load_state_dict(state)
        s = validation_score(probe, self.trie, self.sids, self.held, self.rcfg)
        self.history.append({"step": step, **s})
        if self.record is None or s["score"] > self.record["score"]:
            self.ctx.store.write_bytes(f"{self.prefix}/model.safetensors",
                                       st_save({k: v.detach().contiguous() for k, v in state.items()}))
            self.record = {"step": step, "score": s["score"]}
        self.ctx.store.write_bytes(f"{self.prefix}/best.json",
                                   json.dumps({**self.record, "history": self.history}).encode())

    def best(self) -> tuple[dict, dict]:
        from safetensors.torch import load as st_load

        state = st_load(self.ctx.store.read_bytes(f"{self.prefix}/model.safetensors"))
        return state, {"selected_step": self.record["step"], "selected_score": self.record["score"]}

    def clear(self) -> None:
        self.ctx.store.delete_prefix(self.prefix)


def _figure(curves: dict, date: str, rcfg):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [k for k in ("loss", "grad_norm", "rl_loss_feedback", "rl_loss_rollout", "rl_loss_dpo", "filtered_share")
              if k in curves]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3), squeeze=False)
    for ax, k in zip(axes[0], panels):
        steps, values = zip(*curves[k])
        ax.plot(steps, values)
        ax.set(title=k, xlabel="step")
        ax.grid(alpha=0.3)
    fig.suptitle(f"rl {date}: {rcfg.algorithm}, source {rcfg.source}")
    fig.tight_layout()
    return fig
