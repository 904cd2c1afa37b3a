"""The Spark features job equals the pandas reference, exactly, on real KuaiRand rows and on edge cases;
a day computed from yesterday's state equals the day computed from the raw history; no feature sees an
event at or after its impression.

One Spark session serves the module (start-up costs seconds); each case writes its inputs as parquet,
runs the job, reads the files back and compares them value by value with `onerec.features.reference`.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from onerec.features import longterm, reference, spark_job
from onerec.features.common import OUTPUTS, SAMPLES, Params
from onerec.features.reward import bucket_thresholds, duration_bucket
from onerec.schemas import DAY_MS, EVENT_KEY, ITEMS, USERS, conform, day_start_ms

pytestmark = pytest.mark.slow
CONTEXT = [f.name for f in SAMPLES if f.name.startswith(("short_", "pos_", "long_")) or f.name == "lifelong_len"]


@pytest.fixture(scope="module")
def spark():
    from onerec.features.session import get_spark

    session, _ = get_spark({"master": "local[2]", "shuffle_partitions": 2,
                            "conf": {"spark.driver.extraJavaOptions": "-XX:TieredStopAtLevel=1"}})
    yield session   # shared with later modules; the JVM ends with the test process


def _write(tmp, name: str, table: pa.Table) -> str:
    path = tmp / f"{name}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return str(path)


def run_spark(spark, tmp, date, imps, items, users, *, history=(), state=None, vectors=None, params=None):
    """The Spark job on tables written as parquet; returns (name -> table, name -> file)."""
    tmp.mkdir(parents=True, exist_ok=True)
    inp = spark_job.Inputs(
        day_start_ms=day_start_ms(date), impressions=_write(tmp, "in/impressions", imps),
        items=_write(tmp, "in/items", items), users=_write(tmp, "in/users", users),
        history=[_write(tmp, f"in/history_{i}", h) for i, h in enumerate(history)],
        state=str(state["user_state"]) if state else None,
        reward_history=str(state["reward_history"]) if state else None,
        vectors=_write(tmp, "in/vectors", vectors) if vectors is not None else None)
    files = spark_job.run(spark, inp, params or Params(), tmp / "out")
    return {k: pq.read_table(v) for k, v in files.items()}, files


def assert_same(got: dict, want: dict):
    for name in OUTPUTS:
        g, w = got[name], want[name]
        assert g.column_names == w.column_names, name
        g = g.cast(w.schema)   # Spark's types must cast losslessly onto the contract's
        assert g.num_rows == w.num_rows, f"{name}: {g.num_rows} rows != reference {w.num_rows}"
        gl, wl = g.to_pylist(), w.to_pylist()
        for i, (a, b) in enumerate(zip(gl, wl)):
            if a != b:
                diff = {k: (a[k], b[k]) for k in a if a[k] != b[k]}
                raise AssertionError(f"{name} row {i} differs (spark, reference): {diff}")


def _dedupe(t: pa.Table) -> pa.Table:
    dup = t.select(list(EVENT_KEY)).to_pandas().duplicated(keep="first").to_numpy()
    return t.filter(pa.array(~dup))


def _days(t: pa.Table, start: str, end: str) -> pa.Table:
    lo, hi = day_start_ms(start), day_start_ms(end) + DAY_MS
    return t.filter(pc.and_(pc.greater_equal(t["ts"], lo), pc.less(t["ts"], hi)))


# -- KuaiRand: real rows ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def kuai(kuairand):
    """The 120 most active users of 2022-04-24..04-29 (UTC), their events, all items, their profiles."""
    ds = kuairand
    imps = _dedupe(conform(ds.impressions, "impressions"))
    imps = _days(imps, "2022-04-24", "2022-04-29")
    top = imps.group_by("user_id").aggregate([("ts", "count")]).sort_by([("ts_count", "descending"), ("user_id", "ascending")])
    keep = top["user_id"].slice(0, 120)
    imps = imps.filter(pc.is_in(imps["user_id"], keep))
    items = conform(ds.items, "items").select(ITEMS.names)
    users = conform(ds.users, "users")
    users = users.filter(pc.is_in(users["user_id"], keep))
    return imps, items, users


K1, K2 = "2022-04-28", "2022-04-29"


@pytest.fixture(scope="module")
def kuai_runs(spark, kuai, tmp_path_factory):
    """Spark on 04-28 (raw history 04-24..27), then on 04-29 from 04-28's state."""
    imps, items, users = kuai
    tmp = tmp_path_factory.mktemp("kuai")
    hist1, day1, day2 = _days(imps, "2022-04-24", "2022-04-27"), _days(imps, K1, K1), _days(imps, K2, K2)
    got1, files1 = run_spark(spark, tmp / "d1", K1, day1, items, users, history=[hist1])
    got2, _ = run_spark(spark, tmp / "d2", K2, day2, items, users, state=files1)
    return {"hist1": hist1, "day1": day1, "day2": day2, "got1": got1, "got2": got2, "files1": files1}


def test_kuairand_day_from_raw_history_then_from_state(kuai, kuai_runs):
    _, items, users = kuai
    r = kuai_runs
    assert r["day1"].num_rows > 300 and r["day2"].num_rows > 300 and r["hist1"].num_rows > 1000
    want1 = reference.features(r["day1"], items, users, r["hist1"], day_start_ms=day_start_ms(K1))
    assert_same(r["got1"], want1)
    # day 2 from day 1's state (Spark) == day 2 from the raw history (reference)
    want2 = reference.features(r["day2"], items, users, pa.concat_tables([r["hist1"], r["day1"]]),
                               day_start_ms=day_start_ms(K2))
    assert_same(r["got2"], want2)

    s = r["got2"]["samples"].to_pandas()
    assert (s["short_item_id"].map(len) > 0).mean() > 0.9            # active users: real context
    assert s["q"].notna().mean() > 0.3 and s["q"].dropna().between(0, 1).all()
    assert (s["long_item_id"].map(len) > 0).mean() > 0.9
    assert "profile_user_active_degree" in s.columns


# -- edge cases ---------------------------------------------------------------------------------

D1, D2 = "2026-03-01", "2026-03-02"
T1, T2 = day_start_ms(D1), day_start_ms(D2)


def _imps(rows, served: dict | None = None) -> pa.Table:
    """Impressions from tuples; `served` maps (user, ts) to the gen_prob of an impression our model served."""
    cols = ["user_id", "item_id", "ts", "play_time_ms", "duration_ms", "like", "follow", "forward", "dislike"]
    df = pd.DataFrame(rows, columns=cols)
    df["request_id"] = [f"r{u}-{t}" for u, t in zip(df["user_id"], df["ts"])]
    for c in ("click", "comment"):
        df[c] = 0
    df["click"] = (df["play_time_ms"].fillna(0) > 0).astype(int)
    df["source"], df["gen_prob"] = "legacy", np.nan
    for (user, ts), prob in (served or {}).items():
        at = (df["user_id"] == user) & (df["ts"] == ts)
        df.loc[at, "source"], df.loc[at, "gen_prob"] = "model", prob
    df["play_time_ms"] = df["play_time_ms"].astype("Int64")
    df["duration_ms"] = df["duration_ms"].astype("Int64")
    return conform(df.sort_values(["ts", "user_id", "item_id"]).reset_index(drop=True), "impressions")


N = None
EDGE_DAY1 = _imps([
    # user 1: a rich history; item 17 has no play time, item 18 no duration
    (1, 10, T1 + 1000, 5000, 10000, 0, 0, 0, 0),
    (1, 11, T1 + 2000, 20000, 30000, 0, 0, 0, 0),   # long view (>= 18 s)
    (1, 12, T1 + 3000, 8000, 8000, 0, 0, 0, 0),     # completed: long view
    (1, 13, T1 + 4000, 3000, 10000, 1, 0, 0, 0),    # like
    (1, 17, T1 + 5000, N, 10000, 0, 0, 0, 0),
    (1, 18, T1 + 6000, 1000, N, 0, 0, 0, 1),
    (1, 10, T1 + 7000, 5000, 10000, 0, 0, 0, 0),    # a replay of item 10
    # user 3: two events in the same millisecond
    (3, 10, T1 + 5000, 4000, 10000, 0, 1, 0, 0),
    (3, 11, T1 + 5000, 4000, 10000, 0, 0, 1, 0),
    (3, 12, T1 + 6000, 4000, 10000, 0, 0, 0, 0),
    # user 4: zero durations only (one bucket), ties in play time
    (4, 14, T1 + 1000, 0, 0, 0, 0, 0, 0),
    (4, 15, T1 + 2000, 500, 0, 0, 0, 0, 0),
    (4, 16, T1 + 3000, 500, 0, 0, 0, 0, 0),
])
EDGE_DAY2 = _imps([
    (1, 10, T2 + 1000, 5000, 10000, 0, 0, 0, 0),    # bucket 3 (8-16 s): [5000, 8000, 3000, 5000] -> q = 3/4
    (1, 99, T2 + 2000, 1000, 10000, 0, 0, 0, 0),    # a new item; q = 0/5
    (2, 10, T2 + 1000, 100, 10000, 0, 0, 0, 0),     # a new user: no history, an empty bucket
    (2, 11, T2 + 1000, 200, 10000, 0, 0, 0, 0),     # same millisecond: not context for each other
    (2, 12, T2 + 3000, 300, 10000, 0, 0, 0, 0),
    (3, 13, T2 + 500, 4000, 10000, 0, 0, 0, 0),
    (4, 14, T2 + 1000, 500, 0, 0, 0, 0, 0),         # zero-duration bucket: [0, 500, 500] -> q = 1
    (4, 15, T2 + 1000, 0, 0, 0, 0, 0, 0),           # -> q = 1/3
], served={(3, T2 + 500): 0.125})                   # user 3's impression came from our model (online_validate)


def _edge_items():
    df = pd.DataFrame({"item_id": [10, 11, 12, 13, 14, 15, 16, 17, 18, 99]})
    df["first_seen"] = [T1 - DAY_MS] * 9 + [T2 + 500]
    df["duration_ms"] = pd.array([10000, 30000, 8000, 10000, 0, 0, 0, 10000, None, 10000], dtype="Int64")
    df["author_id"] = pd.array([1, 1, 2, 2, 3, 3, 3, None, 4, 5], dtype="Int64")
    df["tags"] = [["a"], ["a", "b"], ["b"], [], ["c"], ["c"], ["c"], None, ["d"], ["a"]]
    df["text"], df["image_vector"] = None, None
    return conform(df, "items")


def _edge_users(ids):
    return conform(pd.DataFrame({"user_id": ids, "age_group": [i % 3 for i in ids]}), "users")


def _edge_vectors():
    """Three obvious clusters: items 10-13, 14-16, 17-18; item 99 has no vector yet."""
    base = {0: [1, 0, 0, 0], 1: [0, 1, 0, 0], 2: [0, 0, 1, 0]}
    rows = [(i, [v + 0.01 * k for k, v in enumerate(base[0 if i <= 13 else 1 if i <= 16 else 2])])
            for i in range(10, 19)]
    return pa.table({"item_id": pa.array([r[0] for r in rows], pa.int64()),
                     "vector": pa.array([r[1] for r in rows], pa.list_(pa.float32()))})


def test_edge_cases_match_the_reference(spark, tmp_path):
    """Day 1 without history and content vectors; day 2 from day 1's state with embed vectors."""
    items, vectors = _edge_items(), _edge_vectors()
    p = Params(long_clusters=2)
    got1, files1 = run_spark(spark, tmp_path / "d1", D1, EDGE_DAY1, items, _edge_users([1, 3, 4]), params=p)
    assert_same(got1, reference.features(EDGE_DAY1, items, _edge_users([1, 3, 4]), None, day_start_ms=T1, params=p))
    users2 = _edge_users([1, 2, 3, 4])
    got2, _ = run_spark(spark, tmp_path / "d2", D2, EDGE_DAY2, items, users2, state=files1, vectors=vectors, params=p)
    want2 = reference.features(EDGE_DAY2, items, users2, EDGE_DAY1, day_start_ms=T2, params=p, vectors=vectors)
    assert_same(got2, want2)

    s = {(r["user_id"], r["item_id"]): r for r in got2["samples"].to_pylist()}
    # ties in play time count as <=; an empty bucket gives q = null; zero durations share one bucket
    assert s[1, 10]["q"] == 0.75 and s[1, 10]["bucket_history_len"] == 4 and s[1, 10]["bucket"] == 3
    assert s[1, 99]["q"] == 0.0 and s[1, 99]["bucket_history_len"] == 5
    assert s[4, 14]["bucket"] == int(duration_bucket([0])[0]) == -20 and s[4, 14]["q"] == 1.0
    assert s[4, 15]["q"] == 1 / 3
    # a new user: nothing before its first impression; events of the same millisecond do not see each other
    assert s[2, 10]["q"] is None and s[2, 10]["bucket_history_len"] == 0 and s[2, 10]["short_item_id"] == []
    assert s[2, 11]["short_item_id"] == [] and s[2, 11]["lifelong_len"] == 0 and s[2, 11]["long_item_id"] == []
    assert s[2, 12]["short_item_id"] == [10, 11]
    # user 1: the short-term pathway is its last events, oldest first; positives are the long views + like
    assert s[1, 10]["short_item_id"] == [10, 11, 12, 13, 17, 18, 10]
    assert s[1, 99]["short_item_id"][-1] == 10 and s[1, 99]["short_ts"][-1] == T2 + 1000
    assert s[1, 10]["pos_item_id"] == [11, 12, 13]
    assert s[1, 10]["short_author_id"][4] is None and s[1, 10]["short_tags"][1] == ["a", "b"]
    # long-term: 6 distinct lifelong items (10 counted once), 2 clusters of vectors: 10-13 and 17-18
    assert s[1, 10]["lifelong_len"] == 6 and sum(s[1, 10]["long_weight"]) == 6
    reps = dict(zip(s[1, 10]["long_item_id"], s[1, 10]["long_weight"]))
    assert sorted(reps.values()) == [2, 4] and {i // 4 for i in reps} == {2, 4}  # one of 10-13, one of 17-18
    # user 3's same-ms pair is history for day 2 in full
    assert s[3, 13]["short_item_id"] == [10, 11, 12]
    # a served impression keeps its source and gen_prob (pi_old for RL); logged ones have none
    assert (s[3, 13]["source"], s[3, 13]["gen_prob"]) == ("model", 0.125)
    logged = s[1, 10]["gen_prob"]
    assert s[1, 10]["source"] == "legacy" and (logged is None or np.isnan(logged))
    stats = {r["item_id"]: r for r in got2["item_stats"].to_pylist()}
    assert stats[99]["is_new"] and stats[99]["exposures"] == 1 and not stats[10]["is_new"]
    assert stats[16]["exposures"] == 0 and stats[16]["completion_rate"] is None
    assert stats[10]["exposures"] == 2 and stats[10]["users"] == 2


def test_no_feature_sees_the_impression_or_anything_after_it(spark, kuai, kuai_runs, tmp_path):
    """Rewrite every event of 04-29 at or after t* (items, play times, flags, durations; extra events, one in
    the same millisecond as an impression): the features of every impression before t* are unchanged, and
    so is the context of those at t*."""
    _, items, users = kuai
    d = kuai_runs["day2"].to_pandas(types_mapper=lambda t: pd.Int64Dtype() if pa.types.is_int64(t) else None)
    t_star = int(d["ts"].iloc[len(d) // 2])
    rng = np.random.default_rng(1)
    after, at = (d["ts"] > t_star).to_numpy(), (d["ts"] == t_star).to_numpy()
    item_ids = np.array(items["item_id"].to_pylist())
    m = d.copy()
    m.loc[after, "item_id"] = rng.choice(item_ids, after.sum())
    m.loc[after | at, "play_time_ms"] = rng.integers(0, 60_000, (after | at).sum())
    m.loc[after | at, "duration_ms"] = rng.integers(0, 60_000, (after | at).sum())
    for f in ("like", "follow", "forward", "dislike"):
        m.loc[after | at, f] = 1 - m.loc[after | at, f]
    extra = m[after].head(50).copy()
    extra["request_id"] = extra["request_id"] + "-x"
    extra["item_id"] = rng.choice(item_ids, len(extra))
    twin = m[at].head(1).copy()            # one more event in the same millisecond as an impression
    twin["item_id"], twin["request_id"] = rng.choice(item_ids, 1), "same-ms"
    m = pd.concat([m, extra, twin]).drop_duplicates(list(EVENT_KEY))
    m = m.sort_values(["ts", "user_id", "item_id"]).reset_index(drop=True)
    mutated, _ = run_spark(spark, tmp_path, K2, conform(m, "impressions"), items, users,
                           state=kuai_runs["files1"])

    key = ["user_id", "ts", "request_id", "item_id"]
    a = kuai_runs["got2"]["samples"].to_pandas().set_index(key).sort_index()
    b = mutated["samples"].to_pandas().set_index(key).sort_index()
    early = a.index.get_level_values("ts") < t_star
    assert early.sum() > 100 and len(b) == len(a) + len(extra) + 1   # the mutation reached the job
    pd.testing.assert_frame_equal(a[early], b.loc[a.index[early]])
    same_ms = a.index[a.index.get_level_values("ts") == t_star]
    pd.testing.assert_frame_equal(a.loc[same_ms, CONTEXT], b.loc[same_ms, CONTEXT])
    # and, directly: every context timestamp is strictly before its impression
    for r in kuai_runs["got2"]["samples"].select(["ts", "short_ts", "pos_ts", "long_ts"]).to_pylist():
        assert all(x < r["ts"] for x in r["short_ts"] + r["pos_ts"] + r["long_ts"])


# -- the pieces both engines share or mirror ----------------------------------------------------

@pytest.mark.parametrize("beta, unit", [(2.0, 1000), (1.5, 1000), (10.0, 1), (1.1, 250)])
def test_bucket_thresholds_agree_with_the_formula(beta, unit):
    lo, thresholds = bucket_thresholds(beta, 1e-6, unit)
    rng = np.random.default_rng(0)
    d = np.unique(np.concatenate([np.arange(0, 5000), rng.integers(0, 10**9, 20000), np.array(thresholds),
                                  np.array(thresholds) - 1, [10**10, 10**12]]))
    d = d[d >= 0]
    via_thresholds = lo + np.searchsorted(np.array(thresholds), d, side="right")
    assert np.array_equal(via_thresholds, duration_bucket(d, beta, 1e-6, unit).astype(int))


def test_kmeans_kernel_is_deterministic_and_keeps_members():
    rng = np.random.default_rng(3)
    X = np.concatenate([rng.normal(c, 0.05, size=(40, 4)) for c in (0, 1, 2)])
    idx, w = longterm.kmeans_representatives(X, 3, 20, [0, 7])
    again = longterm.kmeans_representatives(X, 3, 20, [0, 7])
    assert np.array_equal(idx, again[0]) and np.array_equal(w, again[1])
    assert sorted(w.tolist()) == [40, 40, 40] and sorted(i // 40 for i in idx) == [0, 1, 2]
    few, ones = longterm.kmeans_representatives(X[:2], 3, 20, [0, 7])
    assert few.tolist() == [0, 1] and ones.tolist() == [1, 1]
    same = np.zeros((10, 4))      # fewer distinct points than clusters: one cluster, the newest item
    idx, w = longterm.kmeans_representatives(same, 3, 20, [0, 1])
    assert idx.tolist() == [9] and w.tolist() == [10]


def test_content_vectors_group_by_author_and_tags():
    X = longterm.content_vectors([1, 2, 3, 4], [7, "7", None, None], [["a"], ["a"], ["b"], None], 32)
    assert np.allclose(X[0], X[1]) and not np.allclose(X[0], X[2])
    assert np.isclose(np.linalg.norm(X[3]), 1.0)          # no author, no tags: its own id


@pytest.mark.parametrize("section, message", [
    ({"short_len": 0}, "features.short_len must be >= 1"),
    ({"reward": {"beta": 1.0}}, "features.reward.beta must be > 1.0"),
    ({"positive_flags": ["likes"]}, "unknown flag"),
    ({"reward": {"empty_q": 2}}, "features.reward.empty_q must be <= 1.0"),
    ({"shortlen": 3}, "unknown config key(s) ['features.shortlen']"),
])
def test_params_reject_bad_config(section, message):
    from onerec.errors import BadInput

    with pytest.raises(BadInput, match=None) as e:
        Params.from_config(section)
    assert message in str(e.value)


def test_defaults_match_the_config_section():
    from onerec.config import DEFAULTS

    assert Params.from_config(DEFAULTS["features"]) == Params()
    assert USERS.names == ["user_id"]
