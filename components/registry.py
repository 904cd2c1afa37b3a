"""The stage registry: the single source of truth for the stage graph.

Airflow DAGs, the Kubeflow pipeline and the local runner are all generated from `STAGES`, so a
stage added here appears everywhere without edits. This module must stay import-light (no torch,
pyspark, mlflow, pandas): DAG files import it and must parse in well under a second.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from onerec.errors import BadInput


@dataclass(frozen=True)
class Stage:
    name: str
    entrypoint: str                       # "module:function" called as fn(ctx) -> dict of metrics
    upstream: tuple[str, ...] = ()        # stages whose outputs this stage reads (must have _SUCCESS)
    config_keys: tuple[str, ...] = ()     # config sections that define this stage's result (hashed)
    retries: int = 2                      # orchestrator retries on exit code 1 (never on 2 or 3)
    pipelines: tuple[str, ...] = ("daily", "bootstrap")
    # requests per task: "cpu", "memory", optional "gpu" (count; Airflow pods and KFP tasks ask for it and run
    # the GPU image)
    resources: dict = field(default_factory=lambda: {"cpu": "1", "memory": "2Gi"})
    description: str = ""
    timeout_s: int = 6 * 3600             # the orchestrators kill a task after this (execution_timeout, pod deadline)


STAGES: tuple[Stage, ...] = (
    Stage(
        name="ingest",
        entrypoint="components.ingest:run",
        config_keys=("data",),
        description="adapter or generator -> the day's impressions/items/users partition",
    ),
    Stage(
        name="validate",
        entrypoint="components.validate:run",
        upstream=("ingest",),
        config_keys=("validate",),
        retries=0,  # bad data does not get better by retrying
        description="Great Expectations gate on the day's tables",
    ),
    Stage(
        name="features",
        entrypoint="components.features:run",
        upstream=("ingest", "validate"),
        config_keys=("features",),
        resources={"cpu": "2", "memory": "4Gi"},   # a Spark driver (local[*] by default) + its Python workers
        description="Spark: user context pathways, newest-impression samples, duration-aware rewards, item stats",
    ),
    Stage(
        name="embed",
        entrypoint="components.embed:run",
        upstream=("ingest", "validate"),
        config_keys=("embed",),
        resources={"cpu": "2", "memory": "6Gi"},   # a text encoder + the catalog's vectors in memory
        description="item content vectors (text, image, tabular) + collaborative fusion (InfoNCE projection)",
    ),
    Stage(
        name="tokenize",
        entrypoint="components.tokenize:run",
        upstream=("embed",),
        config_keys=("tokenize",),
        resources={"cpu": "2", "memory": "8Gi"},   # faiss k-means over the whole catalog at refit time
        description="RQ-KMeans semantic IDs: frozen codebooks for new items, refit + remap on bootstrap",
    ),
    Stage(
        name="pretrain",
        entrypoint="components.pretrain:run",
        upstream=("features", "tokenize"),
        config_keys=("pretrain",),
        resources={"cpu": "4", "memory": "16Gi", "gpu": "1"},   # torchrun; bf16 on a GPU when there is one
        description="lazy decoder-only model on newest-impression samples; warm start from yesterday's model",
    ),
    Stage(
        name="sft",
        entrypoint="components.sft:run",
        upstream=("features", "tokenize", "pretrain"),
        config_keys=("sft", "registry"),
        resources={"cpu": "4", "memory": "16Gi", "gpu": "1"},
        description="supervised fine-tuning of pretrain(D) (or the champion) on day D's exposures; optional RSFT",
    ),
    Stage(
        name="reward_model",
        entrypoint="components.reward_model:run",
        upstream=("features", "tokenize"),
        config_keys=("reward_model",),
        resources={"cpu": "2", "memory": "8Gi"},
        description="OneRec-V1 multi-task reward model (watch-time percentile, like, follow, ...) fused into a P-score",
    ),
    Stage(
        name="rl",
        entrypoint="components.rl:run",
        upstream=("ingest", "features", "tokenize", "sft", "reward_model"),
        config_keys=("rl",),
        resources={"cpu": "4", "memory": "16Gi", "gpu": "1"},   # rollouts + policy updates
        description="RL from sft(D): duration-aware reward shaping + GBPO (ECPO, GRPO, DPO baselines), rollouts",
    ),
    Stage(
        name="evaluate",
        entrypoint="components.evaluate:run",
        upstream=("ingest", "features", "tokenize", "pretrain"),
        config_keys=("evaluate", "registry"),
        resources={"cpu": "2", "memory": "4Gi"},   # beam search over every evaluated user, two models
        description="Recall/HR/NDCG@K via constrained beam search: yesterday's model on today, vs the champion",
    ),
    Stage(
        name="online_validate",
        entrypoint="components.online_validate:run",
        upstream=("ingest", "features", "tokenize", "reward_model", "evaluate"),
        config_keys=("online_validate", "registry"),
        resources={"cpu": "4", "memory": "8Gi"},   # two model services + the replay client + the simulator
        description="A/B replay of day D's requests over HTTP to challenger and champion; simulator feedback; blessing",
        timeout_s=2 * 3600,
    ),
    Stage(
        name="promote",
        entrypoint="components.promote:run",
        upstream=("evaluate", "online_validate"),
        config_keys=("promote", "registry"),
        retries=0,   # a gate decision does not change by retrying
        resources={"cpu": "1", "memory": "2Gi"},
        description="gates (no regression vs the champion, invalid rate 0, online SLO) -> register, move champion",
    ),
)

BY_NAME = {s.name: s for s in STAGES}

# The stage images (docker/cpu.Dockerfile, docker/gpu.Dockerfile); production names its own with ONEREC_IMAGE /
# ONEREC_GPU_IMAGE. A stage with a "gpu" resource runs the GPU image.
IMAGE = "onerec-cpu:0.1.0"
GPU_IMAGE = "onerec-gpu:0.1.0"


def get(name: str) -> Stage:
    try:
        return BY_NAME[name]
    except KeyError:
        raise BadInput(f"unknown stage {name!r}; known: {', '.join(BY_NAME)}") from None


def stages_for(pipeline: str) -> list[Stage]:
    return [s for s in STAGES if pipeline in s.pipelines]


def stages_until(pipeline: str, until: str | None = None) -> list[Stage]:
    """The pipeline's stages up to and including `until` (all of them when None): `--until` of the local
    runner, `params.until` of the Airflow DAGs. An unknown stage is BadInput."""
    stages = stages_for(pipeline)
    if not until:
        return stages
    names = [s.name for s in stages]
    if until not in names:
        raise BadInput(f"--until {until!r} is not a stage of pipeline {pipeline!r}: {', '.join(names)}")
    return stages[: names.index(until) + 1]
