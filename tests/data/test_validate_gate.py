"""The validate gate: corrupted landed days stop with exit 2, say which expectation failed, write nothing.

The landed-parquet source reads files as they are, so each corruption reaches `validate` untouched,
exactly as a bad production log would.
"""
from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from components.cli import main
from components.registry import STAGES
from onerec.data.synthetic import load as synthetic
from onerec.schemas import conform

D = "2026-01-03"
WORLD = dict(n_users=300, new_users_per_day=5, n_items=500, new_items_per_day=20, n_topics=8, n_authors=60)


def land(root, imps: pa.Table | None, items: pa.Table, users: pa.Table, date=D):
    root.mkdir(parents=True, exist_ok=True)
    if imps is not None:
        part = root / "impressions" / f"date={date}"
        part.mkdir(parents=True, exist_ok=True)
        pq.write_table(imps, part / "part-0.parquet")
    pq.write_table(items, root / "items.parquet")
    pq.write_table(users, root / "users.parquet")


@pytest.fixture(scope="module")
def day():
    ds = synthetic(date=D, **WORLD)
    return conform(ds.impressions, "impressions"), conform(ds.items, "items"), conform(ds.users, "users")


def _set(table: pa.Table, col: str, values) -> pa.Table:
    i = table.schema.get_field_index(col)
    return table.set_column(i, pa.field(col, values.type if hasattr(values, "type") else table.schema.field(col).type),
                            values)


def _corrupt_rows(table: pa.Table, col: str, value, n=3) -> pa.Table:
    df = table.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)
    df.loc[df.index[:n], col] = value
    loose = pa.schema([f.with_nullable(True) for f in table.schema])  # a landed file declares no NOT NULL
    return pa.Table.from_pandas(df, schema=loose, preserve_index=False)


CORRUPTIONS = {
    "missing column": (lambda t: t.drop_columns(["play_time_ms"]), "expect_table_columns_to_match_set"),
    "wrong type": (lambda t: _set(t, "item_id", pa.array([str(x) for x in t["item_id"].to_pylist()])),
                   "expect_column_values_to_be_of_type(item_id)"),
    "negative duration": (lambda t: _corrupt_rows(t, "duration_ms", -5000), "expect_column_values_to_be_between(duration_ms)"),
    "nulls in keys": (lambda t: _corrupt_rows(t, "user_id", pd.NA), "expect_column_values_to_not_be_null(user_id)"),
    "duplicated rows": (lambda t: pa.concat_tables([t, t.slice(0, 4)]), "expect_compound_columns_to_be_unique"),
    "empty day": (lambda t: None, "expect_table_row_count_to_be_between"),
    "unknown item ids": (lambda t: _corrupt_rows(t, "item_id", 10**9), "expect_column_values_to_be_in_set(item_id)"),
    "absurd play time": (lambda t: _corrupt_rows(t, "play_time_ms", 10 * 86_400_000),
                         "expect_column_values_to_be_between(play_time_ms)"),
    "flag out of range": (lambda t: _corrupt_rows(t, "like", 2), "expect_column_values_to_be_in_set(like)"),
    "event outside the day": (lambda t: _corrupt_rows(t, "ts", 0), "expect_column_values_to_be_between(ts)"),
}


def run(args, capsys):
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def landed_args(root):
    return ["--set", "data.source=parquet", "--set", f"data.path={root}"]


def test_clean_day_passes(onerec_home, tmp_path, day, capsys):
    land(tmp_path / "landed", *day)
    for stage in ("ingest", "validate"):
        code, out, err = run(["run", stage, "--date", D, *landed_args(tmp_path / "landed")], capsys)
        assert code == 0, err
    assert (onerec_home / "artifacts" / "daily" / D / "validate" / "_SUCCESS").exists()


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_corrupted_day_stops_validate_with_exit_2(onerec_home, tmp_path, day, capsys, kind):
    corrupt, expectation = CORRUPTIONS[kind]
    imps, items, users = day
    land(tmp_path / "landed", corrupt(imps), items, users)
    code, _, err = run(["pipeline", "run", "--start", D, *landed_args(tmp_path / "landed")], capsys)
    assert code == 2, err
    assert f"validation failed for {D}" in err and expectation in err, err
    if kind not in ("missing column", "empty day", "wrong type"):
        assert "e.g. {" in err  # example rows are shown
    day_dir = onerec_home / "artifacts" / "daily" / D
    assert (day_dir / "ingest" / "_SUCCESS").exists()
    assert not (day_dir / "validate" / "_SUCCESS").exists()
    downstream = [s.name for s in STAGES if s.name not in ("ingest", "validate")]
    assert not any((day_dir / s).exists() for s in downstream)


def test_row_count_drift_against_previous_days(onerec_home, tmp_path, day, capsys):
    imps, items, users = day
    root = tmp_path / "landed"
    for date in ("2026-01-01", "2026-01-02"):
        prev = synthetic(date=date, **WORLD)
        land(root, conform(prev.impressions, "impressions"), items, users, date=date)
        for stage in ("ingest", "validate"):
            assert run(["run", stage, "--date", date, *landed_args(root)], capsys)[0] == 0
    land(root, imps.slice(0, imps.num_rows // 5), items, users)   # the day lost 80% of its rows
    code, _, err = run(["pipeline", "run", "--start", D, *landed_args(root)], capsys)
    assert code == 2 and "expect_table_row_count_to_be_between" in err and "observed" in err
