"""What several stages share, so that no stage imports another stage.

  stage_config(ctx, cls)     a stage's config section as its dataclass; an unknown key is exit 2
  registry(ctx) / champion   the `registry:` section and the model version its champion alias points at
  training_days, prepare_files, train_config, load_model, loss_figure
                             the training stages' inputs and outputs (pretrain, sft, rl; evaluate loads models)
  load_reward_model          reward_model(D)'s weights (rl, online_validate)
  read_evaluation, candidate_dirs
                             evaluate(D)'s verdict and the candidate it scored (online_validate, promote)

Import-light at module level, like every stage module: torch, pyarrow and mlflow load inside the functions.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path

from onerec.config import EvaluateConfig, OnlineValidateConfig, PromoteConfig, RegistryConfig
from onerec.errors import BadInput

__all__ = ["EvaluateConfig", "OnlineValidateConfig", "PromoteConfig", "RegistryConfig"]   # the stages' own sections


# -- config ---------------------------------------------------------------------------------------------

def stage_config(ctx, cls, section: dict | None = None):
    """`section` (default: the stage's own) as dataclass `cls`; unknown keys and bad values exit 2."""
    given = dict(ctx.section if section is None else section)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(given) - known
    name = ctx.stage.name if section is None else cls.__name__
    if unknown:
        raise BadInput(f"unknown {name} option(s) {sorted(unknown)}; known: {sorted(known)}")
    try:
        return cls(**given)
    except (TypeError, ValueError) as e:
        raise BadInput(f"{name}: {e}") from None


def checked_section(ctx, cls) -> dict:
    """The stage's section checked against `cls` (see stage_config), as a dict with every default filled in."""
    return dataclasses.asdict(stage_config(ctx, cls))


def registry(ctx) -> RegistryConfig:
    """The `registry:` section: which registered model the stages compare against and move."""
    return stage_config(ctx, RegistryConfig, ctx.config.get("registry") or {})


def champion(ctx):
    """The model version the registry's champion alias points at, or None."""
    from onerec import model_registry

    r = registry(ctx)
    return model_registry.resolve_alias(r.model, r.champion_alias, ctx.config["mlflow"]["tracking_uri"])


# -- training stages ------------------------------------------------------------------------------------

def training_days(ctx) -> list[str]:
    """The dates whose features(D) samples a training stage reads: the `history_days` ending at D that exist."""
    n = int(ctx.section.get("history_days", 1))
    d = dt.date.fromisoformat(ctx.date)
    days = [(d - dt.timedelta(days=i)).isoformat() for i in range(n - 1, -1, -1)]
    return [x for x in days if x == ctx.date or ctx.dir("features", x).is_done()]


def train_config(ctx):
    """TrainConfig from this stage's `train` section (pretrain, sft and rl share it); unknown keys -> exit 2."""
    from onerec.train import TrainConfig

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    given = dict(ctx.section.get("train") or {})
    unknown = set(given) - fields
    if unknown:
        raise BadInput(f"unknown {ctx.stage.name}.train option(s) {sorted(unknown)}; known: {sorted(fields)}")
    return TrainConfig(**given)


def prepare_files(ctx, sids, tmp: Path) -> tuple[list[str], int]:
    """Copy each day's samples to local parquet holding only trainable rows (the target has a semantic ID;
    optionally only positive feedback), one row group at a time so memory stays bounded."""
    import pyarrow.parquet as pq

    from onerec.samples import positive_rows, with_known_target

    files, rows = [], 0
    only_positive = ctx.section.get("samples", "all") == "positive"
    for day in training_days(ctx):
        src = tmp / f"{day}.src.parquet"
        src.write_bytes(ctx.dir("features", day).read_bytes("samples.parquet"))
        out, writer = tmp / f"{day}.parquet", None
        pf = pq.ParquetFile(src)
        for g in range(pf.num_row_groups):
            t = with_known_target(pf.read_row_group(g), sids)
            if only_positive:
                t = positive_rows(t)
            if t.num_rows:
                writer = writer or pq.ParquetWriter(out, t.schema)
                writer.write_table(t, row_group_size=2048)
                rows += t.num_rows
        src.unlink()
        if writer:
            writer.close()
            files.append(str(out))
    return files, rows


def load_model(stage_dir):
    """A trained OneRec from a stage directory (pretrain, sft, rl): safetensors weights + model.json."""
    from safetensors.torch import load as st_load

    from onerec import model as M

    meta = json.loads(stage_dir.read_bytes("model.json"))
    cfg = M.ModelConfig(**meta["model_config"])
    model = M.OneRec(cfg)
    model.load_state_dict(st_load(stage_dir.read_bytes("model.safetensors")))
    return model, meta


def loss_figure(losses, date):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(range(1, len(losses) + 1), losses)
    ax.set(xlabel="step", ylabel="mean NLL of the 3 semantic tokens", title=f"pretrain {date}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def load_reward_model(stage_dir):
    """A trained RewardModel from a reward_model stage directory (safetensors + JSON): (model, meta)."""
    from safetensors.torch import load as st_load

    from onerec import model as M
    from onerec.reward_model import RewardConfig, RewardModel

    meta = json.loads(stage_dir.read_bytes("reward_model.json"))
    rm = RewardModel(M.ModelConfig(**meta["context_config"]), RewardConfig.from_dict(meta["reward_config"]))
    rm.load_state_dict(st_load(stage_dir.read_bytes("reward_model.safetensors")))
    return rm.eval(), meta


# -- the candidate of a date ----------------------------------------------------------------------------

def read_evaluation(ctx, who: str = "promote") -> dict:
    """evaluate(D)'s metrics.json: the candidate (`evaluated_model`) and its metrics next to the champion's."""
    ev = ctx.upstream("evaluate")
    try:
        data = json.loads(ev.read_bytes("metrics.json"))
    except (FileNotFoundError, ValueError) as e:
        raise BadInput(f"{who} {ctx.date}: evaluate's metrics.json is missing or not JSON ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("metrics"), dict) or "evaluated_model" not in data:
        raise BadInput(f"{who} {ctx.date}: evaluate's metrics.json lacks 'metrics' / 'evaluated_model'")
    return data


def candidate_dirs(ctx, evaluated: str, who: str = "promote"):
    """(model stage dir, tokenize dir of the model's own date) of the evaluated candidate."""
    parts = str(evaluated).split("/")
    if len(parts) != 3:
        raise BadInput(f"{who} {ctx.date}: evaluated_model {evaluated!r} is not <pipeline>/<date>/<stage>")
    pipeline, date, stage = parts
    if pipeline != ctx.pipeline:
        raise BadInput(f"{who} {ctx.date}: evaluated model {evaluated} is from another pipeline")
    model_dir, tokenize_dir = ctx.dir(stage, date), ctx.dir("tokenize", date)
    for d in (model_dir, tokenize_dir):
        if not d.is_done():
            raise BadInput(f"{who} {ctx.date}: {d.prefix} has no _SUCCESS at {d.uri()}")
    return model_dir, tokenize_dir
