"""The features gate: clean outputs pass; each corruption fails the expectation that guards it.

Outputs come from the pandas reference (the Spark job's are identical, see test_features_reference),
so these tests need no Spark.
"""
from __future__ import annotations

import pyarrow as pa
import pytest

from onerec.data.synthetic import load
from onerec.features import reference
from onerec.features.common import Params
from onerec.features.expectations import check_frames, summary, validate_outputs
from onerec.schemas import DAY_MS, conform, day_start_ms

WORLD = dict(n_users=120, new_users_per_day=3, n_items=200, new_items_per_day=10, n_topics=6, n_authors=30)
D = "2026-01-02"
P = Params()


@pytest.fixture(scope="module")
def outputs():
    prev, day = load(date="2026-01-01", **WORLD), load(date=D, **WORLD)
    imps = conform(day.impressions, "impressions")
    out = reference.features(imps, conform(day.items, "items"), conform(day.users, "users"),
                             conform(prev.impressions, "impressions"), day_start_ms=day_start_ms(D), params=P)
    counts = {"n_impressions": imps.num_rows, "n_users": len(set(imps["user_id"].to_pylist())),
              "n_items": len(set(imps["item_id"].to_pylist()))}
    return out, counts


def gate(tables, counts) -> dict:
    return validate_outputs(check_frames(tables), P, day_start_ms=day_start_ms(D), **counts)


def _edit(table: pa.Table, fn) -> pa.Table:
    rows = table.to_pylist()
    fn(rows)
    return pa.Table.from_pylist(rows, schema=table.schema)


def _first_with(rows, key):
    return next(r for r in rows if r[key])


def leak(rows):                       # a context event at the impression's own millisecond
    r = _first_with(rows, "short_ts")
    r["short_ts"][-1] = r["ts"]


def unordered(rows):
    r = next(r for r in rows if len(r["pos_ts"]) > 1)
    r["pos_ts"] = r["pos_ts"][::-1]


def too_long(rows):
    r = _first_with(rows, "short_ts")
    r["short_ts"] = [r["short_ts"][0] - 1] * (P.short_len + 1)


def q_above_one(rows):
    next(r for r in rows if r["q"] is not None)["q"] = 1.5


def weights(rows):
    r = _first_with(rows, "long_weight")
    r["long_weight"][0] += r["lifelong_len"]


CASES = {
    "context at the impression's ts": ("samples", leak, "expect_column_pair_values_a_to_be_greater_than_b(ts, context_max_ts)"),
    "context out of time order": ("samples", unordered, "expect_column_values_to_be_in_set(context_in_order)"),
    "short-term pathway too long": ("samples", too_long, "expect_column_values_to_be_between(short_len)"),
    "q above 1": ("samples", q_above_one, "expect_column_values_to_be_between(q)"),
    "long-term weights exceed the lifelong items": (
        "samples", weights, "expect_column_pair_values_a_to_be_greater_than_b(lifelong_len, long_weight_sum)"),
    "a sample missing": ("samples", lambda rows: rows.pop(), "expect_table_row_count_to_equal"),
    "a sample twice": ("samples", lambda rows: rows.append(dict(rows[0])), "expect_compound_columns_to_be_unique"),
    "rewards q below 0": ("rewards", lambda rows: rows[0].update(q=-0.1), "rewards: expect_column_values_to_be_between(q)"),
    "exposures do not add up": ("item_stats", lambda rows: rows[0].update(exposures=rows[0]["exposures"] + 1),
                                "expect_column_sum_to_be_between(exposures)"),
    "more plays than exposures": ("item_stats", lambda rows: _first_with(rows, "exposures").update(
        plays=10**6), "expect_column_pair_values_a_to_be_greater_than_b(exposures, plays)"),
    "state from the future": ("user_state", lambda rows: rows[0].update(last_ts=day_start_ms(D) + DAY_MS),
                              "expect_column_values_to_be_between(last_ts)"),
    "reward history too long": ("reward_history", lambda rows: rows[0].update(
        history=rows[0]["history"] * (P.bucket_history + 1)), "expect_column_values_to_be_between(history_len)"),
}


def test_clean_outputs_pass(outputs):
    tables, counts = outputs
    report = gate(tables, counts)
    assert report["success"], summary(report)
    assert {r["table"] for r in report["results"]} == set(tables)


@pytest.mark.parametrize("kind", list(CASES))
def test_corruption_fails_its_expectation(outputs, kind):
    tables, counts = outputs
    name, corrupt, expectation = CASES[kind]
    report = gate({**tables, name: _edit(tables[name], corrupt)}, counts)
    assert not report["success"]
    text = summary(report)
    assert expectation in text, text
    assert f"{name}: " in text
