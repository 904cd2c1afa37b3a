"""onerec.online: the user split, the day's requests, intervals, play-time mapping, the blessing, the service
process (seconds; the stage itself runs in tests/stage/test_online_validate_stage.py)."""
from __future__ import annotations

import math
import os

import numpy as np
import pandas as pd
import pytest

from onerec import online


def test_split_is_deterministic_salted_and_near_the_share():
    users = np.arange(20_000)
    a = online.split(users, "s1", 0.3)
    assert np.array_equal(a, online.split(users[::-1], "s1", 0.3)[::-1])     # order does not matter
    assert abs(a.mean() - 0.3) < 0.015
    assert 0.2 < (a != online.split(users, "s2", 0.3)).mean() < 0.5       # another salt, another split
    assert not online.split(users, "s1", 0.0).any() and online.split(users, "s1", 1.0).all()


def _impressions():
    from onerec.schemas import conform

    rows = [  # request r1: two items; r2: one; r3 is our own replay (source model) and is not replayed again
        dict(user_id=1, item_id=10, ts=1000, request_id="r1", play_time_ms=500, duration_ms=900, source="legacy"),
        dict(user_id=1, item_id=11, ts=1500, request_id="r1", play_time_ms=800, duration_ms=900, like=1, source="legacy"),
        dict(user_id=2, item_id=12, ts=1200, request_id="r2", play_time_ms=100, duration_ms=900, source="random"),
        dict(user_id=2, item_id=13, ts=1300, request_id="r3", play_time_ms=100, duration_ms=900, source="model",
             gen_prob=0.1),
    ]
    df = pd.DataFrame(rows).fillna({"like": 0})
    for c in ("click", "follow", "comment", "forward", "dislike"):
        df[c] = 0
    return conform(df, "impressions")


def test_requests_of_day_are_logged_requests_in_time_order():
    reqs = online.requests_of_day(_impressions(), 10, "salt")
    assert reqs.request_id.tolist() == ["r1", "r2"] and reqs.ts.tolist() == [1000, 1200]
    assert reqs.user_id.tolist() == [1, 2]
    assert set(reqs.logged[0]) == {10, 11} and reqs.logged[0][11]["like"] == 1
    one = online.requests_of_day(_impressions(), 1, "salt")
    assert len(one.ts) == 1 and one.request_id[0] == online.requests_of_day(_impressions(), 1, "salt").request_id[0]


def test_mean_ci_matches_the_formula_and_covers_the_truth():
    x = np.array([1.0, 2.0, 3.0, 4.0])
    ci = online.mean_ci(x, 0.95)
    half = 1.959963985 * np.std(x, ddof=1) / 2
    assert ci["mean"] == 2.5 and math.isclose(ci["hi"] - 2.5, half, rel_tol=1e-6) and ci["n"] == 4
    rng = np.random.default_rng(0)   # the 95% interval covers the true mean about 95% of the time
    covered = [(lambda c: c["lo"] <= 3.0 <= c["hi"])(online.mean_ci(rng.normal(3.0, 2.0, 200))) for _ in range(1000)]
    assert 0.93 <= np.mean(covered) <= 0.97
    a, b = rng.normal(1, 1, 400), rng.normal(0, 3, 100)
    d = online.diff_ci(a, b)
    se = np.sqrt(a.var(ddof=1) / 400 + b.var(ddof=1) / 100)
    assert math.isclose(d["diff"], a.mean() - b.mean()) and math.isclose(d["hi"] - d["diff"], 1.959963985 * se, rel_tol=1e-6)
    assert math.isnan(online.diff_ci([1.0], [1.0, 2.0])["diff"])


def test_play_time_map_inverts_the_bucket_percentile():
    from onerec.features.reward import duration_bucket

    rng = np.random.default_rng(1)
    dur = np.full(500, 20_000.0)                            # one bucket, F(20 s) = 4
    play = rng.uniform(0, 20_000, 500)
    m = online.PlayTimeMap(play, dur)
    assert m.bucket([20_000])[0] == duration_bucket([20_000])[0] == 4
    out = m([0.0, 0.5, 1.0], [20_000] * 3)
    assert out[0] == play.min() and out[2] == play.max() and math.isclose(out[1], np.median(play))
    q = np.linspace(0, 1, 50)
    assert np.all(np.diff(m(q, np.full(50, 20_000.0))) >= 0)
    # a bucket with too few plays falls back to the watched fraction q * duration
    assert m([0.25], [300_000])[0] == 75_000


def _arm(p99=50.0, err=0.0, invalid=0.0, **means):
    metrics = {k: {"mean": v, "lo": v - 1, "hi": v + 1, "n": 100} for k, v in means.items()}
    return {"requests": 100, "served": 100, "error_rate": err, "invalid_rate": invalid, "latency_p50_ms": 10.0,
            "latency_p99_ms": p99, "metrics": metrics}


def test_blessing_rules():
    section = {"tolerance": 0.05, "latency_p99_ms": 100, "max_error_rate": 0.0,
               "guards": {"stay_time_s": "higher", "dislike": "lower"}}
    champion = _arm(stay_time_s=100.0, dislike=1.0)
    same = {"stay_time_s": {"diff": 0.0, "lo": -2.0, "hi": 2.0}, "dislike": {"diff": 0.0, "lo": -0.1, "hi": 0.1}}
    ok, reasons = online.bless({"challenger": _arm(stay_time_s=100.0, dislike=1.0), "champion": champion}, same, section)
    assert ok and all(r.startswith("ok") for r in reasons)
    worse = {**same, "stay_time_s": {"diff": -10.0, "lo": -12.0, "hi": -6.0}}      # all of it below -5
    ok, reasons = online.bless({"challenger": _arm(stay_time_s=90.0, dislike=1.0), "champion": champion}, worse, section)
    assert not ok and any(r.startswith("FAIL: stay_time_s") for r in reasons)
    noisy = {**same, "stay_time_s": {"diff": -10.0, "lo": -20.0, "hi": -4.0}}      # not significantly beyond -5
    assert online.bless({"challenger": _arm(stay_time_s=90.0, dislike=1.0), "champion": champion}, noisy, section)[0]
    more_dislikes = {**same, "dislike": {"diff": 0.2, "lo": 0.1, "hi": 0.3}}       # lower is better: all above +0.05
    assert not online.bless({"challenger": _arm(stay_time_s=100.0, dislike=1.2), "champion": champion},
                            more_dislikes, section)[0]
    for bad in (_arm(p99=150.0), _arm(err=0.01), _arm(invalid=0.001)):
        ok, reasons = online.bless({"challenger": bad}, {}, section)
        assert not ok and "no champion: absolute checks only" in reasons
    assert online.bless({"challenger": _arm()}, {}, section)[0]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:   # a zombie is not a running server
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_a_service_that_cannot_start_fails_clearly_and_is_gone(tmp_path):
    svc = online.Service(["--bundle", str(tmp_path / "missing"), "--poll-s", "0"], "broken", start_timeout_s=60)
    with pytest.raises(RuntimeError, match="broken service exited"):
        with svc:
            pass
    assert svc.proc is not None and not _alive(svc.proc.pid)
