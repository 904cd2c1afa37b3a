"""OneRec models in the MLflow model registry, without pickle.

A registered version is a folder of plain files logged as run artifacts:
  model.safetensors  weights            model.json   ModelConfig + codebook digest
  trie.safetensors   SID prefix trie    sids.parquet item -> SID (context lookup)    codebook.json
and `MlflowClient().create_model_version(name, source=<that artifact folder's URI>, run_id=...)` points the
version at it. Loading resolves an alias (`champion`, ...) with `get_model_version_by_alias`, downloads the
folder with `mlflow.artifacts.download_artifacts` and reads safetensors/parquet/JSON: nothing is unpickled.
Promotion policy (who moves `champion`, when) is not decided here.
"""
from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from onerec.config import DEFAULTS

BUNDLE_FILES = ("model.safetensors", "model.json", "trie.safetensors", "sids.parquet", "codebook.json")
ARTIFACT_DIR = "onerec_model"


def load_policy(path: str | None = None) -> dict:
    """The registry policy, mlflow/registry_policy.yaml (aliases, tag schema): $ONEREC_REGISTRY_POLICY, else
    the checkout's copy. An installed package without either falls back to the same values built in."""
    import os

    import yaml

    for candidate in (path, os.environ.get("ONEREC_REGISTRY_POLICY"),
                      Path(__file__).resolve().parents[1] / "mlflow" / "registry_policy.yaml"):
        if candidate and Path(candidate).is_file():
            return yaml.safe_load(Path(candidate).read_text())
    return {"aliases": {"champion": "champion", "challenger": "challenger", "previous": "previous"},
            "version_tags": {}, "run_tags": {}}


POLICY = load_policy()
DEFAULT_NAME = DEFAULTS["registry"]["model"]   # the registered model name lives in the config's `registry:` section
ALIASES = POLICY["aliases"]
CHAMPION, CHALLENGER, PREVIOUS = ALIASES["champion"], ALIASES["challenger"], ALIASES["previous"]
VERSION_TAGS = tuple(POLICY.get("version_tags") or ())
ALIAS_EVENT_PREFIX = POLICY.get("alias_event_tag_prefix") or "onerec.alias_event."


@dataclass
class Bundle:
    """Everything inference needs, loaded."""
    model: object          # onerec.model.OneRec (eval mode)
    trie: object           # onerec.item.trie.SidTrie
    sids: object           # onerec.samples.SidTable
    meta: dict             # model.json
    codebook: dict
    version: str = "local"


def write_bundle(dst: Path, model_dir, tokenize_dir) -> Path:
    """Copy a trained model's stage directory (pretrain, sft, rl) and its tokenizer's tables into `dst`."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("model.safetensors", "model.json"):
        (dst / name).write_bytes(model_dir.read_bytes(name))
    (dst / "trie.safetensors").write_bytes(tokenize_dir.read_bytes("trie.safetensors"))
    (dst / "sids.parquet").write_bytes(tokenize_dir.read_bytes("sids.parquet"))
    (dst / "codebook.json").write_bytes(tokenize_dir.read_bytes("codebook.json"))
    return dst


def read_bundle(folder: Path, version: str = "local") -> Bundle:
    import pyarrow.parquet as pq
    from safetensors.torch import load_file

    from onerec import model as M
    from onerec.item.trie import SidTrie
    from onerec.samples import SidTable

    folder = Path(folder)
    missing = [f for f in BUNDLE_FILES if not (folder / f).exists()]
    if missing:
        raise FileNotFoundError(f"model bundle {folder} lacks {missing}")
    meta = json.loads((folder / "model.json").read_text())
    model = M.OneRec(M.ModelConfig(**meta["model_config"]))
    model.load_state_dict(load_file(folder / "model.safetensors"))
    return Bundle(model.eval(), SidTrie.from_bytes((folder / "trie.safetensors").read_bytes()),
                  SidTable.from_table(pq.read_table(folder / "sids.parquet")), meta,
                  json.loads((folder / "codebook.json").read_text()), version)


def register(folder: Path, name: str = DEFAULT_NAME, *, run_id: str | None = None, tags: dict | None = None,
             tracking_uri: str | None = None) -> str:
    """Log `folder` as artifacts of `run_id` (or of the active run, or of a fresh run) and register it as a
    new version of `name`. Returns the version number (a string, as MLflow gives it)."""
    import mlflow
    from mlflow import MlflowClient

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient()
    if run_id is None and mlflow.active_run() is not None:
        run_id = mlflow.active_run().info.run_id
    if run_id is None:
        experiment = DEFAULTS["mlflow"]["experiment"]
        exp = mlflow.get_experiment_by_name(experiment) or mlflow.get_experiment(mlflow.create_experiment(experiment))
        run_id = client.create_run(exp.experiment_id, run_name=f"register {name}").info.run_id
        client.set_terminated(run_id)
    client.log_artifacts(run_id, str(folder), artifact_path=ARTIFACT_DIR)
    try:
        client.get_registered_model(name)
    except mlflow.exceptions.MlflowException:
        try:
            client.create_registered_model(name, description="OneRec generative recommender (safetensors bundle)")
        except mlflow.exceptions.MlflowException:
            pass    # created concurrently
    source = f"{client.get_run(run_id).info.artifact_uri.rstrip('/')}/{ARTIFACT_DIR}"
    version = client.create_model_version(name, source=source, run_id=run_id, tags=tags or {})
    return str(version.version)


def set_alias(name: str, alias: str, version: str, tracking_uri: str | None = None) -> None:
    from mlflow import MlflowClient

    MlflowClient(tracking_uri=tracking_uri).set_registered_model_alias(name, alias, str(version))


def resolve_alias(name: str, alias: str = CHAMPION, tracking_uri: str | None = None):
    """The ModelVersion an alias points at, or None when the model or the alias does not exist."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        return MlflowClient(tracking_uri=tracking_uri).get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def load_version(version, dst: str | None = None, tracking_uri: str | None = None) -> Bundle:
    """Download a ModelVersion's files and read them (safetensors, parquet, JSON)."""
    import os

    import mlflow.artifacts

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")   # log noise in servers and stages
    dst = dst or tempfile.mkdtemp(prefix="onerec-model-")
    local = mlflow.artifacts.download_artifacts(artifact_uri=version.source, dst_path=dst, tracking_uri=tracking_uri)
    return read_bundle(Path(local), version=str(version.version))


def load_alias(name: str = DEFAULT_NAME, alias: str = CHAMPION, tracking_uri: str | None = None) -> Bundle | None:
    version = resolve_alias(name, alias, tracking_uri)
    return None if version is None else load_version(version, tracking_uri=tracking_uri)


def version_tags(stage_dir, tokenize_dir=None, blessed: bool | None = None) -> dict:
    """The policy's version tags for a model registered from a finished stage directory."""
    manifest = stage_dir.manifest()
    tags = {"onerec.pipeline": manifest["pipeline"], "onerec.date": manifest["date"], "onerec.stage": manifest["stage"],
            "onerec.output_digest": stage_dir.digest(), "onerec.code_version": manifest.get("code_version", "")}
    if tokenize_dir is not None:
        tags["onerec.codebook_digest"] = json.loads(tokenize_dir.read_bytes("codebook.json"))["digest"]
    if blessed:
        tags["onerec.blessed"] = "true"
    unknown = set(tags) - set(VERSION_TAGS) if VERSION_TAGS else set()
    assert not unknown, f"tags outside the registry policy: {unknown}"
    return tags


def who() -> str:
    """Who is moving an alias: the orchestrator run when there is one, else user@host."""
    import getpass
    import os
    import socket

    try:
        user = getpass.getuser()
    except Exception:  # no passwd entry in some containers
        user = os.environ.get("USER", "unknown")
    run = os.environ.get("ONEREC_RUN_ID")
    return f"{user}@{socket.gethostname()}" + (f" ({run})" if run else "")


def record_alias_change(name: str, version: str, alias: str, *, action: str = "set", why: str = "",
                        metrics: dict | None = None, replaced: str | None = None, by: str | None = None,
                        tracking_uri: str | None = None) -> dict:
    """Record one alias change as tags on the version it concerns (the policy's alias event schema):
    `<prefix><UTC stamp>.<alias>` (the history) and `onerec.alias.<alias>.last` (the latest). Returns the event."""
    import datetime as dt

    from mlflow import MlflowClient

    now = dt.datetime.now(dt.timezone.utc)
    event = {"alias": alias, "action": action, "version": str(version), "replaced": replaced,
             "who": by or who(), "when": now.isoformat(), "why": why,
             "metrics": {k: (round(v, 6) if isinstance(v, float) else v) for k, v in (metrics or {}).items()}}
    value = json.dumps(event, sort_keys=True)
    if len(value) > 5000:               # MLflow's tag value limit: keep who/when/why, drop the metrics
        value = json.dumps({**event, "metrics": {"truncated": True}}, sort_keys=True)
    client = MlflowClient(tracking_uri=tracking_uri)
    client.set_model_version_tag(name, str(version), f"{ALIAS_EVENT_PREFIX}{now.strftime('%Y%m%dT%H%M%S%fZ')}.{alias}", value)
    client.set_model_version_tag(name, str(version), f"onerec.alias.{alias}.last", value)
    return event


def promote(name: str, version: str, *, why: str = "", metrics: dict | None = None,
            tracking_uri: str | None = None, champion: str = CHAMPION) -> str | None:
    """`version` becomes `champion` (the alias; config `registry.champion_alias`); the old champion becomes
    `previous`; `challenger` is removed when it pointed at `version`. Every change is recorded as version tags.
    Returns the old champion's version."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    old = resolve_alias(name, champion, tracking_uri)
    old_version = None if old is None else str(old.version)
    if old_version is not None and old_version != str(version):
        old_previous = resolve_alias(name, PREVIOUS, tracking_uri)
        client.set_registered_model_alias(name, PREVIOUS, old_version)
        record_alias_change(name, old_version, PREVIOUS, why=f"replaced as {champion} by version {version}: {why}",
                            replaced=None if old_previous is None else str(old_previous.version),
                            tracking_uri=tracking_uri)
    client.set_registered_model_alias(name, champion, str(version))
    record_alias_change(name, version, champion, why=why, metrics=metrics, replaced=old_version,
                        tracking_uri=tracking_uri)
    challenger = resolve_alias(name, CHALLENGER, tracking_uri)
    if challenger is not None and str(challenger.version) == str(version):
        client.delete_registered_model_alias(name, CHALLENGER)
        record_alias_change(name, version, CHALLENGER, action="removed", why=f"promoted to {champion}",
                            tracking_uri=tracking_uri)
    return old_version


def rollback(name: str = DEFAULT_NAME, tracking_uri: str | None = None, why: str = "") -> str:
    """One step back: `previous` becomes `champion`; the rolled-back version keeps `challenger` for analysis.
    Returns the new champion's version. Every alias change is recorded as version tags."""
    from mlflow import MlflowClient

    from onerec.errors import BadInput

    client = MlflowClient(tracking_uri=tracking_uri)
    previous = resolve_alias(name, PREVIOUS, tracking_uri)
    if previous is None:
        raise BadInput(f"{name} has no {PREVIOUS!r} alias: nothing to roll back to")
    current = resolve_alias(name, CHAMPION, tracking_uri)
    why = why or "rollback"
    current_version = None if current is None else str(current.version)
    client.set_registered_model_alias(name, CHAMPION, str(previous.version))
    client.delete_registered_model_alias(name, PREVIOUS)
    record_alias_change(name, previous.version, PREVIOUS, action="removed", why=why, tracking_uri=tracking_uri)
    record_alias_change(name, previous.version, CHAMPION, why=why, replaced=current_version, tracking_uri=tracking_uri)
    if current is not None and current_version != str(previous.version):
        client.set_registered_model_alias(name, CHALLENGER, current_version)
        record_alias_change(name, current_version, CHALLENGER, why=f"rolled back from {CHAMPION}: {why}",
                            tracking_uri=tracking_uri)
    return str(previous.version)
