"""Great Expectations suites on the features outputs: the gate the stage passes before it commits.

GX checks flat columns, so each output is first reduced to a "check frame" of per-row facts read from
the written parquet files (what will be committed, not what Spark meant to write): list lengths, the
newest context timestamp, whether each context list is in time order. The suites then say:
- samples: one row per impression of the day (count = ingest's), unique event keys, pathway lengths
  within their bounds, every context timestamp strictly before the impression, lists in time order,
  q in [0, 1], bucket histories within bounds, long-term weights summing to at most the lifelong items;
- rewards: same row count and keys, q in [0, 1];
- item_stats: exposures sum to the day's impressions, plays <= exposures, completions <= plays,
  completion rate in [0, 1], every exposed item present;
- user_state / reward_history: unique keys, lengths within bounds, nothing at or after the day's end,
  every user of the day present.
"""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from onerec.features.common import Params
from onerec.schemas import DAY_MS, EVENT_KEY
from onerec.validation import _jsonable

CHECK_COLUMNS = {
    "samples": ["user_id", "item_id", "ts", "request_id", "play_time_ms", "bucket", "bucket_history_len", "q",
                "short_ts", "pos_ts", "long_ts", "long_weight", "lifelong_len"],
    "rewards": ["user_id", "item_id", "ts", "request_id", "bucket_history_len", "q"],
    "item_stats": None,
    "user_state": ["user_id", "n_events", "last_ts", "short", "positive", "lifelong"],
    "reward_history": ["user_id", "bucket", "history"],
}


def _array(col) -> pa.Array:
    return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col


def _lengths(col) -> np.ndarray:
    return pc.fill_null(pc.list_value_length(_array(col)), 0).to_numpy(zero_copy_only=False).astype(np.int64)


def _list_stats(col, field: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per row of a list<int64> (or list<struct>, taking `field`) column: the max value (NaN if empty)
    and whether the row's values are non-decreasing."""
    col = _array(col)
    n = len(col)
    flat = pc.list_flatten(col)
    if field:
        flat = pc.struct_field(flat, field)
    values = flat.to_numpy(zero_copy_only=False).astype(np.float64)
    parent = pc.list_parent_indices(col).to_numpy(zero_copy_only=False).astype(np.int64)
    mx = np.full(n, np.nan)
    if len(values):
        np.fmax.at(mx, parent, values)
    ordered = np.ones(n, dtype=bool)
    if len(values) > 1:
        bad = (np.diff(values) < 0) & (parent[1:] == parent[:-1])
        ordered[parent[1:][bad]] = False
    return mx, ordered


def _ints(x: np.ndarray):
    return pd.array(np.where(np.isnan(x), None, x), dtype="Int64")


def _frame(name: str, t: pa.Table) -> pd.DataFrame:
    if name == "samples":
        df = t.select(["user_id", "item_id", "ts", "request_id", "play_time_ms", "bucket", "bucket_history_len",
                       "q", "lifelong_len"]).to_pandas()
        newest, ordered = np.full(len(df), np.nan), np.ones(len(df), dtype=bool)
        for path in ("short", "pos", "long"):
            mx, ok = _list_stats(t[f"{path}_ts"])
            df[f"{path}_len"] = _lengths(t[f"{path}_ts"])
            newest, ordered = np.fmax(newest, mx), ordered & ok
        df["context_max_ts"] = _ints(newest)
        df["context_in_order"] = ordered
        w = pc.list_flatten(t["long_weight"]).to_numpy(zero_copy_only=False).astype(np.int64)
        df["long_weight_sum"] = np.bincount(np.repeat(np.arange(len(df)), _lengths(t["long_weight"])), weights=w,
                                            minlength=len(df)).astype(np.int64)
        return df
    if name == "user_state":
        df = t.select(["user_id", "n_events", "last_ts"]).to_pandas()
        for c in ("short", "positive", "lifelong"):
            df[f"{c}_len"] = _lengths(t[c])
            mx, ok = _list_stats(t[c], "ts")
            df[f"{c}_max_ts"] = _ints(mx)
            df[f"{c}_in_order"] = ok
        return df
    if name == "reward_history":
        df = t.select(["user_id", "bucket"]).to_pandas()
        df["history_len"] = _lengths(t["history"])
        mx, ok = _list_stats(t["history"], "ts")
        df["history_max_ts"] = _ints(mx)
        df["history_in_order"] = ok
        return df
    return t.to_pandas()


def check_frames(files: dict) -> dict[str, pd.DataFrame]:
    """name -> check frame, from parquet file paths or pyarrow tables. Files are read one row group at
    a time: the gate holds the per-row facts, not the context lists."""
    out = {}
    for name, src in files.items():
        if isinstance(src, pa.Table):
            out[name] = _frame(name, src)
            continue
        f = pq.ParquetFile(src)
        parts = [_frame(name, f.read_row_group(i, columns=CHECK_COLUMNS.get(name))) for i in range(f.num_row_groups)]
        out[name] = pd.concat(parts, ignore_index=True) if parts else _frame(name, f.schema_arrow.empty_table())
    return out


def suites(E, p: Params, *, n_impressions: int, n_users: int, n_items: int, day_start_ms: int) -> dict[str, list]:
    between = lambda c, lo, hi: E.ExpectColumnValuesToBeBetween(column=c, min_value=lo, max_value=hi)  # noqa: E731
    before = lambda a, b: E.ExpectColumnPairValuesAToBeGreaterThanB(  # noqa: E731
        column_A=a, column_B=b, or_equal=False, ignore_row_if="either_value_is_missing")
    at_least = lambda a, b: E.ExpectColumnPairValuesAToBeGreaterThanB(column_A=a, column_B=b, or_equal=True)  # noqa: E731
    day_end = day_start_ms + DAY_MS - 1
    return {
        "samples": [
            E.ExpectTableRowCountToEqual(value=n_impressions),
            E.ExpectCompoundColumnsToBeUnique(column_list=list(EVENT_KEY)),
            *[E.ExpectColumnValuesToNotBeNull(column=c) for c in EVENT_KEY],
            between("ts", day_start_ms, day_end),
            between("short_len", 0, p.short_len), between("pos_len", 0, p.positive_len),
            between("long_len", 0, p.long_clusters), between("lifelong_len", 0, p.lifelong_len),
            before("ts", "context_max_ts"),
            E.ExpectColumnValuesToBeInSet(column="context_in_order", value_set=[True]),
            between("q", 0, 1), between("bucket_history_len", 0, p.bucket_history),
            at_least("lifelong_len", "long_weight_sum"),
        ],
        "rewards": [
            E.ExpectTableRowCountToEqual(value=n_impressions),
            E.ExpectCompoundColumnsToBeUnique(column_list=list(EVENT_KEY)),
            between("q", 0, 1), between("bucket_history_len", 0, p.bucket_history),
        ],
        "item_stats": [
            E.ExpectColumnValuesToBeUnique(column="item_id"),
            E.ExpectColumnSumToBeBetween(column="exposures", min_value=n_impressions, max_value=n_impressions),
            E.ExpectTableRowCountToBeBetween(min_value=n_items),
            at_least("exposures", "plays"), at_least("plays", "completions"), at_least("exposures", "users"),
            at_least("exposures", "likes"), at_least("exposures", "dislikes"),
            between("completion_rate", 0, 1),
        ],
        "user_state": [
            E.ExpectColumnValuesToBeUnique(column="user_id"),
            E.ExpectTableRowCountToBeBetween(min_value=n_users),
            between("n_events", 1, None), between("last_ts", None, day_end),
            between("short_len", 1, p.short_len), between("positive_len", 0, p.positive_len),
            between("lifelong_len", 1, p.lifelong_len),
            *[between(f"{c}_max_ts", None, day_end) for c in ("short", "positive", "lifelong")],
            *[E.ExpectColumnValuesToBeInSet(column=f"{c}_in_order", value_set=[True])
              for c in ("short", "positive", "lifelong")],
        ],
        "reward_history": [
            E.ExpectCompoundColumnsToBeUnique(column_list=["user_id", "bucket"]),
            between("history_len", 1, p.bucket_history), between("history_max_ts", None, day_end),
            E.ExpectColumnValuesToBeInSet(column="history_in_order", value_set=[True]),
        ],
    }


def validate_outputs(frames: dict[str, pd.DataFrame], p: Params, *, n_impressions: int, n_users: int, n_items: int,
                     day_start_ms: int, example_rows: int = 5) -> dict:
    """Run the suites on check frames; a JSON-able report {success, results} like the validate gate's."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    source = ctx.data_sources.add_pandas("features")
    all_suites = suites(gx.expectations, p, n_impressions=n_impressions, n_users=n_users, n_items=n_items,
                        day_start_ms=day_start_ms)
    results = []
    for name, expectations in all_suites.items():
        df = frames[name]
        batch = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe("day").get_batch(
            batch_parameters={"dataframe": df})
        run = batch.validate(gx.ExpectationSuite(name=f"features.{name}", expectations=expectations),
                             result_format={"result_format": "COMPLETE", "partial_unexpected_count": example_rows})
        for r in run.results:
            kw = {k: v for k, v in r.expectation_config.kwargs.items() if k not in ("batch_id", "value_set")}
            entry = {"table": name, "expectation": r.expectation_config.type, "kwargs": _jsonable(kw),
                     "success": bool(r.success)}
            if not r.success:
                res = r.result or {}
                entry["unexpected_count"] = res.get("unexpected_count")
                entry["observed_value"] = _jsonable(res.get("observed_value"))
                idx = (res.get("unexpected_index_list") or [])[:example_rows]
                entry["examples"] = _jsonable(df.iloc[[i for i in idx if isinstance(i, int)]].to_dict("records"))
                exc = (r.exception_info or {}).get("exception_message")
                if exc:
                    entry["error"] = exc.splitlines()[0][:300]
            results.append(entry)
    return {"success": all(r["success"] for r in results), "results": results}


def summary(report: dict) -> str:
    """Which expectations failed, with example rows (the validate gate's format; pairs say A, B)."""
    failed = [r for r in report["results"] if not r["success"]]
    lines = [f"{len(failed)} of {len(report['results'])} expectations failed:"]
    for r in failed:
        kw = r["kwargs"]
        col = kw.get("column") or (f"{kw['column_A']}, {kw['column_B']}" if "column_A" in kw else "") or \
            ", ".join(kw.get("column_list") or [])
        what = f"{r['unexpected_count']} unexpected" if r.get("unexpected_count") else f"observed {r.get('observed_value')}"
        lines.append(f"  - {r['table']}: {r['expectation']}({col}): {r.get('error') or what}")
        lines += [f"      e.g. {ex}" for ex in r.get("examples") or []]
    return "\n".join(lines)
