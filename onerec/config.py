"""Configuration: built-in defaults < preset YAML (`--config`) < `--set key=value` overrides.

A stage's result is defined by the config sections it declares in the registry, so only those are
hashed into its manifest: changing `validate.*` does not invalidate yesterday's ingest.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path

import yaml

from onerec.errors import BadInput

DEFAULTS: dict = {
    "pipeline": "daily",
    "store": {"root": None},              # None -> $ONEREC_HOME/artifacts; or s3://bucket/prefix
    "mlflow": {"tracking_uri": None,      # None -> sqlite:///$ONEREC_HOME/mlflow.db
               "experiment": "onerec"},
    "data": {
        "source": "synthetic",            # a name in onerec.data.ADAPTERS
        "path": None,                     # dataset folder for file-based sources
        "options": {},                    # passed to the adapter (e.g. n_users for synthetic)
        "dedupe": False,                  # drop repeated events (same user, item, ts, request_id) at ingest
    },
    "validate": {
        "drift_days": 7,                  # row-count drift is judged against this many previous days
        "drift_tolerance": 0.5,           # allowed relative deviation from their mean row count
        "max_play_time_ms": 4 * 3600 * 1000,   # longer than any real session: a logging bug
        "max_duration_ms": 24 * 3600 * 1000,
        "referential_users": True,        # every impression's user must be in the users table
        "example_rows": 5,                # failing rows shown per expectation
    },
}


def home() -> Path:
    return Path(os.environ.get("ONEREC_HOME", Path.home() / ".onerec")).expanduser()


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def parse_set(item: str) -> tuple[list[str], object]:
    if "=" not in item:
        raise BadInput(f"--set expects key=value, got {item!r}")
    key, raw = item.split("=", 1)
    if not key or any(not p for p in key.split(".")):
        raise BadInput(f"--set has an empty key in {item!r}")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | tuple = ()) -> dict:
    cfg = copy.deepcopy(DEFAULTS)
    if path:
        p = Path(path)
        if not p.is_file():
            raise BadInput(f"config file not found: {p}")
        try:
            preset = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise BadInput(f"malformed config {p}: {str(e).splitlines()[0]}") from None
        if not isinstance(preset, dict):
            raise BadInput(f"malformed config {p}: top level must be a mapping")
        cfg = deep_merge(cfg, preset)
    for item in overrides:
        keys, value = parse_set(item)
        node = cfg
        for k in keys[:-1]:
            if not isinstance(node.setdefault(k, {}), dict):
                raise BadInput(f"--set {item!r}: {k!r} is not a section")
            node = node[k]
        node[keys[-1]] = value
    return cfg


def resolved(cfg: dict) -> dict:
    """Fill the home-relative defaults (kept out of hashes: where things live is not what they are)."""
    cfg = copy.deepcopy(cfg)
    cfg["store"]["root"] = cfg["store"]["root"] or str(home() / "artifacts")
    cfg["mlflow"]["tracking_uri"] = cfg["mlflow"]["tracking_uri"] or f"sqlite:///{home() / 'mlflow.db'}"
    return cfg


def section_hash(cfg: dict, keys) -> str:
    picked = {k: cfg.get(k) for k in sorted(keys)}
    return hashlib.sha256(json.dumps(picked, sort_keys=True, default=str).encode()).hexdigest()
