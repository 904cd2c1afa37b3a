"""Find the previous finished run of a stage: where a daily run gets its frozen state.

A daily run of date D continues from the newest finished run before it: the `bootstrap` run of D
itself (a refit supersedes), else the newest `bootstrap` or `daily` run of an earlier date (at equal
dates `bootstrap` wins). A bootstrap run of D looks only at earlier dates, so the two pipelines can
never depend on each other in a cycle.
"""
from __future__ import annotations

import datetime as dt

from onerec.store import StageDir, Store

PIPELINES = ("bootstrap", "daily")


def previous_run(store: Store, pipeline: str, stage: str, date: str, lookback_days: int = 60) -> StageDir | None:
    d = dt.date.fromisoformat(date)
    for back in range(0, lookback_days + 1):
        day = (d - dt.timedelta(days=back)).isoformat()
        for p in PIPELINES:
            same_day_refit = pipeline != "bootstrap" and p == "bootstrap"
            if back == 0 and not same_day_refit:
                continue
            candidate = StageDir(store, p, day, stage)
            if candidate.is_done():
                return candidate
    return None
