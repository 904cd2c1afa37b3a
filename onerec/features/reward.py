"""Duration-aware reward shaping (OneRec-V2 Sec. 3.1.1) and the positive-feedback rule, in numpy.

Bucket of a duration d (ms):  F(d) = floor(log_beta(d / unit_ms + eps)), beta > 1 (default 2, unit 1 s,
eps 1e-6), so zero durations get one finite bucket (F(0) = floor(log_beta(eps)), -20 for the defaults).
Null or negative durations have no bucket.

Percentile rank of an impression i of user u with play time p_i and bucket b:
    q_i = |{p_j in P_ub : p_j <= p_i}| / |P_ub|
where P_ub holds the play times of u's most recent `history_len` events in bucket b strictly before the
impression (same rule as every other feature: events at the same millisecond are not history for each
other). Ties in play time count as "<=", so an impression equal to all its history gets q = 1.
Empty bucket (a user's first video of that duration range): q = `empty_q`, null by default, meaning "no
peer group, no evidence"; downstream RL treats a null q as not positive (advantage 0, or -1 on a dislike).
Impressions with null play time or no bucket get q = null and do not enter any history.

The Spark job computes the same F from integer thresholds (`bucket_thresholds`): the smallest duration
(ms) of every bucket, found by bisection on this very function, so both engines agree to the bit
instead of trusting two libm's `log` near bucket edges.
"""
from __future__ import annotations

import numpy as np

MAX_DURATION_MS = 10**12   # ~31 years: durations are clamped here before bucketing


def duration_bucket(duration_ms, beta: float = 2.0, eps: float = 1e-6, unit_ms: int = 1000) -> np.ndarray:
    """F(d) for an array of durations in ms; NaN where the duration is null or negative."""
    d = np.asarray(duration_ms, dtype=np.float64)
    invalid = ~np.isfinite(d) | (d < 0)
    d = np.clip(np.where(invalid, 0.0, d), 0, MAX_DURATION_MS)
    with np.errstate(divide="ignore"):
        b = np.floor(np.log(d / unit_ms + eps) / np.log(beta))
    return np.where(invalid, np.nan, b)


def bucket_thresholds(beta: float = 2.0, eps: float = 1e-6, unit_ms: int = 1000) -> tuple[int, list[int]]:
    """(F(0), t) with t[i] the smallest integer duration (ms) whose bucket is >= F(0) + 1 + i, so that
    F(d) = F(0) + #{t_i <= d} for every 0 <= d <= MAX_DURATION_MS."""
    f = lambda x: int(duration_bucket([x], beta, eps, unit_ms)[0])  # noqa: E731
    lo_bucket, hi_bucket = f(0), f(MAX_DURATION_MS)
    thresholds = []
    for k in range(lo_bucket + 1, hi_bucket + 1):
        lo, hi = 0, MAX_DURATION_MS          # invariant: f(lo) < k <= f(hi)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if f(mid) >= k:
                hi = mid
            else:
                lo = mid
        thresholds.append(hi)
    return lo_bucket, thresholds


def is_long_view(play_time_ms, duration_ms, long_view_ms: int | None, long_view_ratio: float | None) -> np.ndarray:
    """A long view: play time >= long_view_ms, or (known duration > 0 and) play >= ratio x duration.
    The defaults (18 s, ratio 1.0) reproduce KuaiRand's own long_view flag on 99.8% of its log."""
    p = np.asarray(play_time_ms, dtype=np.float64)
    d = np.asarray(duration_ms, dtype=np.float64)
    out = np.zeros(p.shape, dtype=bool)
    with np.errstate(invalid="ignore"):
        if long_view_ms is not None:
            out |= p >= long_view_ms
        if long_view_ratio is not None:
            out |= (d > 0) & (p >= d * long_view_ratio)
    return out


def is_positive(df, positive_flags, long_view_ms, long_view_ratio) -> np.ndarray:
    """The positive-feedback pathway's rule (like / follow / forward by default, or a long view)."""
    out = is_long_view(df["play_time_ms"].astype("float64").to_numpy(), df["duration_ms"].astype("float64").to_numpy(),
                       long_view_ms, long_view_ratio)
    for f in positive_flags:
        out |= df[f].to_numpy() == 1
    return out


def percentile_rank(history: np.ndarray, p: float, empty_q: float | None = None) -> float | None:
    """q = |{h in history : h <= p}| / |history|; `empty_q` for an empty history."""
    if len(history) == 0:
        return empty_q
    return int(np.count_nonzero(history <= p)) / len(history)

