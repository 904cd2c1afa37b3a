"""Which earlier run a daily embed/tokenize continues from (onerec.item.history.previous_run)."""
from __future__ import annotations

from onerec.item.history import previous_run
from onerec.store import LocalStore, StageDir


def done(store, pipeline, date, stage="tokenize"):
    d = StageDir(store, pipeline, date, stage)
    d.commit({"stage": stage})
    return d


def where(d):
    return None if d is None else (d.pipeline, d.date)


def test_daily_continues_from_the_newest_earlier_run_and_a_same_day_bootstrap_wins(tmp_path):
    store = LocalStore(tmp_path)
    assert previous_run(store, "daily", "tokenize", "2026-01-05") is None
    done(store, "daily", "2026-01-02")
    done(store, "daily", "2026-01-05")                       # itself: never its own predecessor
    assert where(previous_run(store, "daily", "tokenize", "2026-01-05")) == ("daily", "2026-01-02")
    done(store, "bootstrap", "2026-01-02")                   # same date: the refit supersedes
    assert where(previous_run(store, "daily", "tokenize", "2026-01-05")) == ("bootstrap", "2026-01-02")
    done(store, "bootstrap", "2026-01-05")                   # a bootstrap of D itself, run before daily D
    assert where(previous_run(store, "daily", "tokenize", "2026-01-05")) == ("bootstrap", "2026-01-05")


def test_bootstrap_looks_only_at_earlier_dates_and_within_the_lookback(tmp_path):
    store = LocalStore(tmp_path)
    done(store, "daily", "2026-01-05")
    assert previous_run(store, "bootstrap", "tokenize", "2026-01-05") is None    # no cycle with daily D
    done(store, "daily", "2026-01-01")
    assert where(previous_run(store, "bootstrap", "tokenize", "2026-01-05")) == ("daily", "2026-01-01")
    assert previous_run(store, "bootstrap", "tokenize", "2026-01-05", lookback_days=3) is None
    unfinished = StageDir(store, "daily", "2026-01-04", "tokenize")
    unfinished.write_json("codebook.json", {})              # outputs without _SUCCESS are not trusted
    assert where(previous_run(store, "daily", "tokenize", "2026-01-05")) == ("daily", "2026-01-01")
