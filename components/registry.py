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
    resources: dict = field(default_factory=lambda: {"cpu": "1", "memory": "2Gi"})
    description: str = ""


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
)

BY_NAME = {s.name: s for s in STAGES}


def get(name: str) -> Stage:
    try:
        return BY_NAME[name]
    except KeyError:
        raise BadInput(f"unknown stage {name!r}; known: {', '.join(BY_NAME)}") from None


def stages_for(pipeline: str) -> list[Stage]:
    return [s for s in STAGES if pipeline in s.pipelines]
