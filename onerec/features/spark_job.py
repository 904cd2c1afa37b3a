"""The features job on Spark: day D's impressions + the users' history -> five tables.

How history is carried: day D starts from a compact per-user state as of the start of the day (the
`user_state` and `reward_history` written by day D-1: last `short_len` events, last `positive_len`
positive events, up to `lifelong_len` distinct lifelong items, per duration bucket the last
`bucket_history` plays, event count) merged with any raw impressions not yet in it (all earlier days
when there is no state). Every state field is a "last n in event order" of a stream, so
merge(merge(empty, A), B) == merge(empty, A + B): a day computed from yesterday's state equals the day
computed from the whole raw history, and the daily cost depends on the day's rows and the number of
users, not on the number of days.

Event order and leakage: one user's events are ordered by (ts, item_id, request_id) (unique by the
data contract). An impression at time t sees exactly the user's events with ts < t: earlier days and
earlier events of day D; events in the same millisecond are not context for each other, whatever
their order in the log. The long-term pathway is computed once per user per day from the lifelong
items as of the start of day D (a slowly changing signal; intra-day events reach the model through the
short-term and positive pathways).

The plan: one shuffle groups, per user, the state rows and the day's events into sorted arrays (state
short-term and positive events, lifelong items, per-bucket plays; the day's events). Two range windows
on ts over the day's events (`rangeBetween(unboundedPreceding, -1)`, by user and by user and bucket)
count, for each impression, the user's events, positives and same-bucket plays strictly before it; its
pathways are then `slice`s of the arrays ending there (no per-impression scan of the history), and
the end-of-day state is the tail of the same arrays. The arrays travel with each of the user's rows
inside one task, so a user with n events a day moves O(n^2) bytes: nothing at human activity levels;
a bot with 10^5 impressions a day should be filtered before this job. The long-term pathway is a
scalar pandas UDF (numpy k-means) per active user.
Outputs are deterministic (sorted, one file each) so a rerun yields identical bytes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd   # module level: the pandas UDF's type hints are resolved in this namespace
import pyarrow as pa

from onerec.features.common import (EVENT_FIELDS, ORDER, OUTPUTS, PROFILE_PREFIX, REWARDS, SAMPLES, SORT_KEYS,
                                    Params)
from onerec.features.reward import MAX_DURATION_MS, bucket_thresholds
from onerec.schemas import FLAGS, IMPRESSIONS

EV = list(EVENT_FIELDS)
PLAY = ["ts", "item_id", "request_id", "play_time_ms"]


@dataclass
class Inputs:
    """Local (or Spark-readable, e.g. s3a://) parquet paths of everything day D reads."""
    day_start_ms: int
    impressions: str
    items: str
    users: str
    history: list[str] = field(default_factory=list)   # raw impressions not covered by `state`
    state: str | None = None                           # user_state.parquet of an earlier day
    reward_history: str | None = None                  # reward_history.parquet of that same day
    vectors: str | None = None                         # embed's vectors.parquet (item_id, vector)


def spark_type(t: pa.DataType):
    from pyspark.sql import types as T

    if pa.types.is_list(t):
        return T.ArrayType(spark_type(t.value_type))
    if pa.types.is_struct(t):
        return T.StructType([T.StructField(f.name, spark_type(f.type)) for f in t])
    return {pa.int64(): T.LongType(), pa.int32(): T.IntegerType(), pa.int8(): T.ByteType(),
            pa.float64(): T.DoubleType(), pa.string(): T.StringType(), pa.bool_(): T.BooleanType()}[t]


def _schema(pa_schema: pa.Schema):
    from pyspark.sql import types as T

    return T.StructType([T.StructField(f.name, spark_type(f.type)) for f in pa_schema])


@dataclass
class State:
    """A user state as rows (one per kept event / item / play)."""
    short: object
    positive: object
    life: object
    plays: object
    counts: object


def _top(df, part: list[str], n: int, order=ORDER):
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    w = Window.partitionBy(*part).orderBy(*[F.col(c).desc() for c in order])
    return df.withColumn("_r", F.row_number().over(w)).where(F.col("_r") <= n).drop("_r")


def _state_types():
    from onerec.features.common import EVENT_STRUCT, PLAY_STRUCT

    ev = pa.struct([*EVENT_STRUCT, pa.field("author_id", pa.int64()), pa.field("tags", pa.list_(pa.string()))])
    return spark_type(ev), spark_type(pa.struct([pa.field("bucket", pa.int32()), *PLAY_STRUCT]))


def _empty_state(spark) -> State:
    from onerec.features.common import EVENT_STRUCT, LIFE_STRUCT, PLAY_STRUCT

    ev = _schema(pa.schema([("user_id", pa.int64()), *[(f.name, f.type) for f in EVENT_STRUCT]]))
    life = _schema(pa.schema([("user_id", pa.int64()), *[(f.name, f.type) for f in LIFE_STRUCT]]))
    plays = _schema(pa.schema([("user_id", pa.int64()), ("bucket", pa.int32()), *[(f.name, f.type) for f in PLAY_STRUCT]]))
    counts = _schema(pa.schema([("user_id", pa.int64()), ("n_events", pa.int64()), ("last_ts", pa.int64())]))
    mk = lambda s: spark.createDataFrame([], s)  # noqa: E731
    return State(mk(ev), mk(ev), mk(life), mk(plays), mk(counts))


def _read_state(spark, inp: Inputs) -> State:
    from pyspark.sql import functions as F

    st = spark.read.parquet(inp.state)
    rh = spark.read.parquet(inp.reward_history)
    return State(
        short=st.select("user_id", F.inline("short")).select("user_id", *EV),
        positive=st.select("user_id", F.inline("positive")).select("user_id", *EV),
        life=st.select("user_id", F.inline("lifelong")).select("user_id", "ts", "item_id"),
        plays=rh.select("user_id", "bucket", F.inline("history")).select("user_id", "bucket", *PLAY),
        counts=st.select("user_id", "n_events", "last_ts"),
    )


def _annotate(df, p: Params):
    """+ _pos (positive feedback), _bucket (duration bucket), _valid (enters play-time histories)."""
    from pyspark.sql import functions as F

    pos = F.lit(False)
    for f in p.positive_flags:
        pos = pos | (F.col(f) == 1)
    play, dur = F.col("play_time_ms"), F.col("duration_ms")
    if p.long_view_ms is not None:
        pos = pos | F.coalesce(play >= F.lit(p.long_view_ms), F.lit(False))
    if p.long_view_ratio is not None:
        pos = pos | F.coalesce((dur > 0) & (play.cast("double") >= dur.cast("double") * F.lit(p.long_view_ratio)),
                               F.lit(False))
    lo, thresholds = bucket_thresholds(p.beta, p.eps, p.unit_ms)
    d = F.least(dur, F.lit(MAX_DURATION_MS))
    above = F.size(F.filter(F.array(*[F.lit(t).cast("long") for t in thresholds]), lambda t: t <= d)) \
        if thresholds else F.lit(0)
    bucket = F.when(dur.isNull() | (dur < 0), F.lit(None)).otherwise(F.lit(lo) + above).cast("int")
    return df.select("*", pos.alias("_pos"), bucket.alias("_bucket"), (play.isNotNull() & bucket.isNotNull()).alias("_valid"))


def _merge(st: State, ev, p: Params) -> State:
    """The state after appending events `ev` (annotated; all later than anything in `st`)."""
    from pyspark.sql import functions as F

    events = ev.select("user_id", *EV)
    life = (ev.groupBy("user_id", "item_id").agg(F.max("ts").alias("ts")).select("user_id", "ts", "item_id")
            .unionByName(st.life).groupBy("user_id", "item_id").agg(F.max("ts").alias("ts")))
    plays = ev.where("_valid").select("user_id", F.col("_bucket").alias("bucket"), *PLAY)
    counts = (ev.groupBy("user_id").agg(F.count(F.lit(1)).alias("n_events"), F.max("ts").alias("last_ts"))
              .unionByName(st.counts).groupBy("user_id")
              .agg(F.sum("n_events").cast("long").alias("n_events"), F.max("last_ts").alias("last_ts")))
    return State(
        short=_top(st.short.unionByName(events), ["user_id"], p.short_len),
        positive=_top(st.positive.unionByName(ev.where("_pos").select("user_id", *EV)), ["user_id"], p.positive_len),
        life=_top(life.select("user_id", "ts", "item_id"), ["user_id"], p.lifelong_len, order=("ts", "item_id")),
        plays=_top(st.plays.unionByName(plays), ["user_id", "bucket"], p.bucket_history),
        counts=counts,
    )


def _last(arr, k, n: int):
    """The last n of the first k elements of array column `arr`."""
    from pyspark.sql import functions as F

    return F.slice(arr, F.greatest(k - F.lit(n - 1), F.lit(1)), F.least(k, F.lit(n)))


def _long_udf(p: Params, mode: str):
    """Scalar pandas UDF: (user_id, lifelong items) -> the long-term pathway struct (longterm.compress)."""
    from pyspark.sql import functions as F

    schema = ("struct<long_item_id:array<long>, long_author_id:array<long>, long_ts:array<long>, "
              "long_weight:array<int>, lifelong_len:int>")

    @F.pandas_udf(schema)
    def long_term(user_id: pd.Series, life: pd.Series) -> pd.DataFrame:
        from onerec.features import longterm

        rows = []
        for uid, items in zip(user_id, life):
            if items is None or len(items) == 0:
                rows.append({"long_item_id": [], "long_author_id": [], "long_ts": [], "long_weight": [],
                             "lifelong_len": 0})
                continue
            out = longterm.compress(int(uid), items, p, mode)
            out.pop("user_id")
            rows.append(out)
        return pd.DataFrame(rows, columns=["long_item_id", "long_author_id", "long_ts", "long_weight", "lifelong_len"])

    return long_term


def build(spark, inp: Inputs, p: Params) -> dict:
    """The output DataFrames (lazy; `write` runs them). See the module docstring and common.SAMPLES."""
    from pyspark import StorageLevel
    from pyspark.sql import Window
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    day = _annotate(spark.read.parquet(inp.impressions).select(*IMPRESSIONS.names), p)
    items = spark.read.parquet(inp.items)
    attrs = items.select("item_id", "author_id", "tags")   # small catalogs are broadcast by Spark itself
    users = spark.read.parquet(inp.users)
    profile_cols = [f.name for f in users.schema.fields if f.name != "user_id" and not isinstance(f.dataType, T.NullType)]

    # -- the state as of the start of day D (rows; None: no history at all) -----------------------
    st0 = _read_state(spark, inp) if inp.state else None
    if inp.history:
        st0 = _merge(st0 or _empty_state(spark), _annotate(
            spark.read.parquet(*inp.history).select(*IMPRESSIONS.names), p), p)

    # -- where each impression sits among the day's events of its user (and of its bucket) ---------
    w_user = Window.partitionBy("user_id").orderBy("ts").rangeBetween(Window.unboundedPreceding, -1)
    w_bucket = Window.partitionBy("user_id", "_bucket").orderBy("ts").rangeBetween(Window.unboundedPreceding, -1)
    day = day.select("*", F.count(F.lit(1)).over(w_user).alias("_c"),
                     F.coalesce(F.sum(F.col("_pos").cast("int")).over(w_user), F.lit(0)).alias("_cp"),
                     F.coalesce(F.sum(F.col("_valid").cast("int")).over(w_bucket), F.lit(0)).alias("_cb"))

    # -- one row per user: its state and its day, as sorted arrays ------------------------------
    ctx = [*EV, "author_id", "tags"]
    src = F.col("_src")
    union = day.join(attrs, "item_id", "left").select(
        "user_id", F.lit("day").alias("_src"),
        F.struct(*ctx, "source", "gen_prob", "_pos", "_bucket", "_valid", "_c", "_cp", "_cb").alias("d"))
    if st0 is not None:
        life_fields = ["ts", "item_id", F.col("author_id").cast("string").alias("author_id"), "tags"]
        life = st0.life.join(attrs, "item_id", "left")
        if inp.vectors:
            life = life.join(spark.read.parquet(inp.vectors).select("item_id", "vector"), "item_id", "left")
            life_fields.append("vector")
        for r in (
            st0.short.join(attrs, "item_id", "left").select("user_id", F.lit("short").alias("_src"),
                                                            F.struct(*ctx).alias("e")),
            st0.positive.join(attrs, "item_id", "left").select("user_id", F.lit("pos").alias("_src"),
                                                               F.struct(*ctx).alias("e")),
            life.select("user_id", F.lit("life").alias("_src"), F.struct(*life_fields).alias("l")),
            st0.plays.select("user_id", F.lit("play").alias("_src"), F.struct("bucket", *PLAY).alias("pl")),
            st0.counts.select("user_id", F.lit("count").alias("_src"), "n_events", "last_ts"),
        ):
            union = union.unionByName(r, allowMissingColumns=True)
    else:   # typed empty columns, so the aggregation below has one shape
        ev_t, pl_t = _state_types()
        union = union.select("*", F.lit(None).cast(ev_t).alias("e"), F.lit(None).cast(
            "struct<ts:long,item_id:long,author_id:string,tags:array<string>>").alias("l"),
            F.lit(None).cast(pl_t).alias("pl"), F.lit(None).cast("long").alias("n_events"),
            F.lit(None).cast("long").alias("last_ts"))
    collect = lambda col, kind: F.collect_list(F.when(src == kind, F.col(col)))  # noqa: E731
    U = union.groupBy("user_id").agg(
        F.sort_array(collect("e", "short")).alias("hs"), F.sort_array(collect("e", "pos")).alias("hp"),
        collect("l", "life").alias("hl"), F.sort_array(collect("pl", "play")).alias("hpl"),
        F.sort_array(collect("d", "day")).alias("dd"),
        F.coalesce(F.sum(F.when(src == "count", F.col("n_events"))), F.lit(0)).alias("hn"),
        F.max(F.when(src == "count", F.col("last_ts"))).alias("hlast"))

    as_event = lambda x: F.struct(*[x[f].alias(f) for f in ctx])  # noqa: E731
    as_play = lambda x: F.struct(*[x[f].alias(f) for f in PLAY])  # noqa: E731
    dd = F.col("dd")
    pla = F.concat("hpl", F.transform(F.filter(dd, lambda x: x["_valid"]), lambda x: F.struct(
        x["_bucket"].alias("bucket"), *[x[f].alias(f) for f in PLAY])))
    U = U.select("user_id", "hs", "hp", "hl", "hpl", "dd", "hn", "hlast",
                 F.concat("hs", F.transform(dd, as_event)).alias("sa"),
                 F.concat("hp", F.transform(F.filter(dd, lambda x: x["_pos"]), as_event)).alias("pa"),
                 pla.alias("pla"))
    buckets = F.array_sort(F.array_distinct(F.transform("pla", lambda x: x["bucket"])))
    active = F.size("dd") > 0
    U = U.select("*", buckets.alias("buckets"), _long_udf(p, "embed" if inp.vectors else "content")(
        F.col("user_id"), F.when(active, F.col("hl"))).alias("long"))
    U = U.select("*", F.map_from_arrays("buckets", F.transform(
        "buckets", lambda b: F.transform(F.filter("pla", lambda x: x["bucket"] == b), as_play))).alias("pmap"),
        F.map_from_arrays("buckets", F.transform(
            "buckets", lambda b: F.size(F.filter("hpl", lambda x: x["bucket"] == b)))).alias("hmap"))
    U = U.persist(StorageLevel.MEMORY_AND_DISK)

    # -- samples: one per impression of the day ------------------------------------------------
    t = U.where(active).select("user_id", "sa", "pa", "pmap", "hmap", "long", F.size("hs").alias("_hs"),
                               F.size("hp").alias("_hp"), F.explode("dd").alias("x"))
    x = F.col("x")
    sc = _last(F.col("sa"), F.col("_hs") + x["_c"], p.short_len)
    pc = _last(F.col("pa"), F.col("_hp") + x["_cp"], p.positive_len)
    hist = _last(F.col("pmap")[x["_bucket"]], F.coalesce(F.col("hmap")[x["_bucket"]], F.lit(0)) + x["_cb"],
                 p.bucket_history)
    t = t.select("user_id", "long", *[x[f].alias(f) for f in [*ctx, "source", "gen_prob"]],
                 x["_bucket"].alias("bucket"), sc.alias("_sc"), pc.alias("_pc"), hist.alias("_hist"))
    n_hist = F.coalesce(F.size("_hist"), F.lit(0))
    below = F.size(F.filter("_hist", lambda h: h["play_time_ms"] <= F.col("play_time_ms")))
    t = t.select("*", F.when(F.col("bucket").isNull(), F.lit(0)).otherwise(n_hist).alias("bucket_history_len"),
                 F.when(F.col("bucket").isNull() | F.col("play_time_ms").isNull(), F.lit(None))
                 .when(n_hist == 0, F.lit(p.empty_q)).otherwise(below / n_hist).alias("q"))
    if profile_cols:
        t = t.join(users.select("user_id", *[F.col(c).alias(PROFILE_PREFIX + c) for c in profile_cols]),
                   "user_id", "left")
    exprs = {
        **{f"short_{k}": F.col("_sc").getField(k) for k in ("item_id", "author_id", "tags", "ts", "play_time_ms",
                                                              "duration_ms", *FLAGS)},
        **{f"pos_{k}": F.col("_pc").getField(k) for k in ("item_id", "author_id", "ts", "play_time_ms", "duration_ms")},
        **{k: F.col("long").getField(k) for k in ("long_item_id", "long_author_id", "long_ts", "long_weight",
                                                  "lifelong_len")},
    }
    out = []
    for f in SAMPLES:
        typ = spark_type(f.type)
        c = exprs.get(f.name, F.col(f.name))
        if pa.types.is_list(f.type) and f.name.startswith(("short_", "pos_", "long_")):   # not `tags`
            c = F.coalesce(c, F.array().cast(typ))
        elif f.name == "lifelong_len":
            c = F.coalesce(c, F.lit(0))
        out.append(c.cast(typ).alias(f.name))
    samples = t.select(*out, *[PROFILE_PREFIX + c for c in profile_cols])

    # -- the state as of the end of day D ---------------------------------------------------------
    keep_last = lambda arr, n: F.slice(arr, F.greatest(F.size(arr) - F.lit(n - 1), F.lit(1)), n)  # noqa: E731
    strip = lambda arr: F.transform(arr, lambda e: F.struct(*[e[f].alias(f) for f in EV]))  # noqa: E731
    # lifelong: (item, ts) of the state and the day, last occurrence per item, the newest lifelong_len
    by_item = F.sort_array(F.concat(F.transform("hl", lambda e: F.struct(e["item_id"].alias("item_id"), e["ts"].alias("ts"))),
                                    F.transform("dd", lambda e: F.struct(e["item_id"].alias("item_id"), e["ts"].alias("ts")))))
    U2 = U.select("*", by_item.alias("_bi"))
    last_per_item = F.filter("_bi", lambda e, i: F.coalesce(F.get(F.col("_bi"), i + 1)["item_id"] != e["item_id"],
                                                           F.lit(True)))
    lifelong = keep_last(F.sort_array(F.transform(last_per_item, lambda e: F.struct(e["ts"].alias("ts"),
                                                                                e["item_id"].alias("item_id")))),
                         p.lifelong_len)
    user_state = U2.select(
        "user_id", (F.col("hn") + F.size("dd")).cast("long").alias("n_events"),
        F.greatest(F.col("hlast"), F.array_max(F.transform("dd", lambda e: e["ts"]))).alias("last_ts"),
        strip(keep_last(F.col("sa"), p.short_len)).alias("short"),
        strip(keep_last(F.col("pa"), p.positive_len)).alias("positive"), lifelong.alias("lifelong"))
    user_state = user_state.select(*[F.col(f.name).cast(spark_type(f.type)) for f in OUTPUTS["user_state"]])
    reward_history = (U.select("user_id", F.explode(F.transform("buckets", lambda b: F.struct(
        b.alias("bucket"), keep_last(F.col("pmap")[b], p.bucket_history).alias("history")))).alias("r"))
        .select("user_id", F.col("r.bucket").cast("int").alias("bucket"),
                F.col("r.history").cast(spark_type(OUTPUTS["reward_history"].field("history").type)).alias("history")))

    # -- item statistics of the day ------------------------------------------------------------
    play, dur = F.col("play_time_ms"), F.col("duration_ms")
    flag_sum = lambda f, name: F.sum(F.col(f)).cast("long").alias(name)  # noqa: E731
    g = day.groupBy("item_id").agg(
        F.count(F.lit(1)).alias("exposures"), F.countDistinct("user_id").alias("users"),
        F.sum(F.when(play > 0, 1).otherwise(0)).cast("long").alias("plays"),
        F.sum(F.when((dur > 0) & (play >= dur), 1).otherwise(0)).cast("long").alias("completions"),
        F.coalesce(F.sum(play), F.lit(0)).cast("long").alias("play_time_ms"),
        flag_sum("click", "clicks"), flag_sum("like", "likes"), flag_sum("dislike", "dislikes"),
        flag_sum("follow", "follows"), flag_sum("comment", "comments"), flag_sum("forward", "forwards"))
    counts = [c for c in OUTPUTS["item_stats"].names if c not in ("item_id", "first_seen", "is_new", "completion_rate")]
    stats = items.select("item_id", "first_seen").join(g, "item_id", "full_outer")
    stats = stats.select(
        "item_id", "first_seen", (F.col("first_seen") >= F.lit(inp.day_start_ms)).alias("is_new"),
        *[F.coalesce(F.col(c), F.lit(0)).cast("long").alias(c) for c in counts])
    rate = F.when(F.col("plays") > 0, F.col("completions") / F.col("plays"))
    item_stats = stats.select(*[(rate if f.name == "completion_rate" else F.col(f.name)).cast(spark_type(f.type))
                                .alias(f.name) for f in OUTPUTS["item_stats"]])

    return {"samples": samples, "user_state": user_state, "reward_history": reward_history,
            "item_stats": item_stats, "_cached": [U]}


def write(frames: dict, out_dir: str | Path) -> dict[str, Path]:
    """Write each output as ONE sorted parquet file; returns name -> local file path."""
    out_dir = Path(out_dir)
    files = {}

    def one(df, name, sort=True):
        path = out_dir / name
        df = df.repartition(1).sortWithinPartitions(*SORT_KEYS[name]) if sort else df.coalesce(1)
        df.write.mode("overwrite").option("compression", "zstd").parquet(str(path))
        parts = sorted(path.glob("part-*.parquet"))
        if len(parts) != 1:
            raise RuntimeError(f"expected one part file in {path}, found {len(parts)}")
        files[name] = parts[0]

    try:
        for name in ("samples", "user_state", "reward_history", "item_stats"):
            one(frames[name], name)
        # rewards: columns of the written samples (one sorted file: read back in order, coalesce keeps it)
        spark = frames["samples"].sparkSession
        one(spark.read.parquet(str(files["samples"])).select(*REWARDS.names), "rewards", sort=False)
    finally:
        for df in frames.get("_cached", ()):
            df.unpersist()
    return {name: files[name] for name in OUTPUTS}


def run(spark, inp: Inputs, p: Params, out_dir: str | Path) -> dict[str, Path]:
    return write(build(spark, inp, p), out_dir)
