"""What the Spark job and the pandas reference share: parameters, the output schemas, the event order.

Kept free of pyspark so the component, the expectations and the reference import it cheaply.
"""
from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from onerec.errors import BadInput
from onerec.schemas import FLAGS

# One user's events are totally ordered by (ts, item_id, request_id): the data contract makes
# (user_id, item_id, ts, request_id) unique, so "the last n events" never depends on the engine.
ORDER = ("ts", "item_id", "request_id")
SAMPLE_KEY = ("ts", "user_id", "item_id", "request_id")   # row order of samples.parquet / rewards.parquet
# The fields an event carries in the state and in the short-term / positive pathways.
EVENT_FIELDS = ("ts", "item_id", "request_id", "play_time_ms", "duration_ms", *FLAGS)

_EVENT_TYPES = {"ts": pa.int64(), "item_id": pa.int64(), "request_id": pa.string(), "play_time_ms": pa.int64(),
                "duration_ms": pa.int64(), **{f: pa.int8() for f in FLAGS}}
EVENT_STRUCT = pa.struct([pa.field(f, _EVENT_TYPES[f]) for f in EVENT_FIELDS])
LIFE_STRUCT = pa.struct([pa.field("ts", pa.int64()), pa.field("item_id", pa.int64())])
PLAY_STRUCT = pa.struct([pa.field("ts", pa.int64()), pa.field("item_id", pa.int64()),
                         pa.field("request_id", pa.string()), pa.field("play_time_ms", pa.int64())])

L = pa.list_
# samples.parquet: one row per impression of day D (OneRec-V2 "newest impression only", Figure 3c).
# The profile_* columns (the users table's static features) follow these, in the users table's order.
SAMPLES = pa.schema([
    # the newest impression: what is predicted and its labels
    ("user_id", pa.int64()), ("item_id", pa.int64()), ("ts", pa.int64()), ("request_id", pa.string()),
    ("play_time_ms", pa.int64()), ("duration_ms", pa.int64()), *[(f, pa.int8()) for f in FLAGS],
    ("source", pa.string()), ("gen_prob", pa.float64()),
    ("author_id", pa.int64()), ("tags", L(pa.string())),
    # duration-aware reward (OneRec-V2 Sec. 3.1.1)
    ("bucket", pa.int32()), ("bucket_history_len", pa.int32()), ("q", pa.float64()),
    # short-term pathway: the last `short_len` events strictly before ts, oldest first
    ("short_item_id", L(pa.int64())), ("short_author_id", L(pa.int64())), ("short_tags", L(L(pa.string()))),
    ("short_ts", L(pa.int64())), ("short_play_time_ms", L(pa.int64())), ("short_duration_ms", L(pa.int64())),
    *[(f"short_{f}", L(pa.int8())) for f in FLAGS],
    # positive-feedback pathway: the last `positive_len` positive events strictly before ts, oldest first
    ("pos_item_id", L(pa.int64())), ("pos_author_id", L(pa.int64())), ("pos_ts", L(pa.int64())),
    ("pos_play_time_ms", L(pa.int64())), ("pos_duration_ms", L(pa.int64())),
    # long-term pathway: the lifelong items (as of the start of day D) compressed by k-means
    ("long_item_id", L(pa.int64())), ("long_author_id", L(pa.int64())), ("long_ts", L(pa.int64())),
    ("long_weight", L(pa.int32())), ("lifelong_len", pa.int32()),
])
REWARDS = pa.schema([
    ("user_id", pa.int64()), ("item_id", pa.int64()), ("ts", pa.int64()), ("request_id", pa.string()),
    ("duration_ms", pa.int64()), ("play_time_ms", pa.int64()), ("dislike", pa.int8()),
    ("bucket", pa.int32()), ("bucket_history_len", pa.int32()), ("q", pa.float64()),
])
# The state carried to day D+1 (and the user context as of the end of day D, e.g. for serving).
USER_STATE = pa.schema([
    ("user_id", pa.int64()), ("n_events", pa.int64()), ("last_ts", pa.int64()),
    ("short", L(EVENT_STRUCT)), ("positive", L(EVENT_STRUCT)), ("lifelong", L(LIFE_STRUCT)),
])
# Per user and duration bucket: the most recent plays (oldest first) as of the end of day D.
REWARD_HISTORY = pa.schema([("user_id", pa.int64()), ("bucket", pa.int32()), ("history", L(PLAY_STRUCT))])
ITEM_STATS = pa.schema([
    ("item_id", pa.int64()), ("first_seen", pa.int64()), ("is_new", pa.bool_()),
    ("exposures", pa.int64()), ("users", pa.int64()), ("plays", pa.int64()), ("completions", pa.int64()),
    ("completion_rate", pa.float64()), ("play_time_ms", pa.int64()),
    ("clicks", pa.int64()), ("likes", pa.int64()), ("dislikes", pa.int64()),
    ("follows", pa.int64()), ("comments", pa.int64()), ("forwards", pa.int64()),
])
OUTPUTS = {"samples": SAMPLES, "rewards": REWARDS, "user_state": USER_STATE,
           "reward_history": REWARD_HISTORY, "item_stats": ITEM_STATS}
SORT_KEYS = {"samples": SAMPLE_KEY, "rewards": SAMPLE_KEY, "user_state": ("user_id",),
             "reward_history": ("user_id", "bucket"), "item_stats": ("item_id",)}
PROFILE_PREFIX = "profile_"


@dataclass(frozen=True)
class Params:
    """The `features:` config section, checked. Every field changes the outputs (it is hashed)."""
    short_len: int = 20
    positive_len: int = 256
    positive_flags: tuple[str, ...] = ("like", "follow", "forward")
    long_view_ms: int | None = 18_000
    long_view_ratio: float | None = 1.0
    lifelong_len: int = 1000
    long_clusters: int = 32
    kmeans_iters: int = 20
    seed: int = 0
    hash_dim: int = 32
    embed_lookback_days: int = 30
    beta: float = 2.0
    eps: float = 1e-6
    unit_ms: int = 1000
    bucket_history: int = 1000
    empty_q: float | None = None

    @classmethod
    def from_config(cls, section: dict | None) -> "Params":
        s = dict(section or {})
        reward = dict(s.pop("reward", None) or {})
        vectors = dict(s.pop("vectors", None) or {})
        kw = {}
        for k in ("short_len", "positive_len", "lifelong_len", "long_clusters", "kmeans_iters", "seed"):
            if k in s:
                kw[k] = _int(f"features.{k}", s.pop(k), low=0 if k == "seed" else 1)
        if "positive_flags" in s:
            flags = s.pop("positive_flags") or []
            bad = [f for f in flags if f not in FLAGS]
            if bad or not isinstance(flags, (list, tuple)):
                raise BadInput(f"features.positive_flags: unknown flag(s) {bad}; known: {list(FLAGS)}")
            kw["positive_flags"] = tuple(flags)
        if "long_view_ms" in s:
            v = s.pop("long_view_ms")
            kw["long_view_ms"] = None if v is None else _int("features.long_view_ms", v, low=0)
        if "long_view_ratio" in s:
            v = s.pop("long_view_ratio")
            kw["long_view_ratio"] = None if v is None else _float("features.long_view_ratio", v, low=0.0)
        if "lookback_days" in vectors:
            kw["embed_lookback_days"] = _int("features.vectors.lookback_days", vectors.pop("lookback_days"), low=0)
        if "hash_dim" in vectors:
            kw["hash_dim"] = _int("features.vectors.hash_dim", vectors.pop("hash_dim"), low=2)
        if "beta" in reward:
            kw["beta"] = _float("features.reward.beta", reward.pop("beta"), low=1.0, strict=True)
        if "eps" in reward:
            kw["eps"] = _float("features.reward.eps", reward.pop("eps"), low=0.0, strict=True)
        if "unit_ms" in reward:
            kw["unit_ms"] = _int("features.reward.unit_ms", reward.pop("unit_ms"), low=1)
        if "history_len" in reward:
            kw["bucket_history"] = _int("features.reward.history_len", reward.pop("history_len"), low=1)
        if "empty_q" in reward:
            v = reward.pop("empty_q")
            kw["empty_q"] = None if v is None else _float("features.reward.empty_q", v, low=0.0, high=1.0)
        unknown = [f"features.{k}" for k in s] + [f"features.reward.{k}" for k in reward] + \
                  [f"features.vectors.{k}" for k in vectors]
        if unknown:
            raise BadInput(f"unknown config key(s) {unknown}")
        return cls(**kw)


def _int(name, v, low=None):
    if isinstance(v, bool) or not isinstance(v, int):
        raise BadInput(f"{name} must be an integer, got {v!r}")
    if low is not None and v < low:
        raise BadInput(f"{name} must be >= {low}, got {v}")
    return v


def _float(name, v, low=None, high=None, strict=False):
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise BadInput(f"{name} must be a number, got {v!r}")
    v = float(v)
    if low is not None and (v <= low if strict else v < low):
        raise BadInput(f"{name} must be {'>' if strict else '>='} {low}, got {v}")
    if high is not None and v > high:
        raise BadInput(f"{name} must be <= {high}, got {v}")
    return v
