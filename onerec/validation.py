"""Great Expectations suites for the day's tables (the `validate` gate).

Types are checked on pandas columns converted with nullable dtypes (an int64 parquet column with
nulls stays integer), so a float `play_time_ms` or a string `item_id` is caught as a wrong type.
"""
from __future__ import annotations

import logging
import math

import pandas as pd
import pyarrow as pa

from onerec.schemas import DAY_MS, EVENT_KEY, FLAGS, SOURCES, TABLES

# pyarrow type -> the dtype name GX reports for it after a nullable-dtype conversion
_GX_TYPE = {pa.int64(): "int64", pa.int8(): "int8", pa.float64(): "float64", pa.string(): "str"}
_NULLABLE = {pa.int64(): pd.Int64Dtype(), pa.int8(): pd.Int8Dtype(), pa.int32(): pd.Int32Dtype(),
             pa.float64(): pd.Float64Dtype(), pa.string(): pd.StringDtype()}


def to_pandas(table: pa.Table) -> pd.DataFrame:
    return table.to_pandas(types_mapper=_NULLABLE.get)


def _types(E, name: str) -> list:
    out = []
    for f in TABLES[name]:
        if f.type in _GX_TYPE:
            out.append(E.ExpectColumnValuesToBeOfType(column=f.name, type_=_GX_TYPE[f.type]))
        if not f.nullable:
            out.append(E.ExpectColumnValuesToNotBeNull(column=f.name))
    return out


def impressions_suite(E, *, date_start_ms: int, item_ids, user_ids, row_bounds, cfg, played: bool = False) -> list:
    """`played`: the day carries watch time (some play_time_ms not null); then a day on which nobody watched
    anything (every play_time_ms 0: a logging bug) fails `expect_column_max_to_be_between(play_time_ms)`."""
    cols = TABLES["impressions"].names
    ex = [E.ExpectTableColumnsToMatchSet(column_set=cols, exact_match=True), *_types(E, "impressions")]
    ex += [
        E.ExpectTableRowCountToBeBetween(min_value=row_bounds[0], max_value=row_bounds[1]),
        E.ExpectColumnValuesToBeBetween(column="ts", min_value=date_start_ms, max_value=date_start_ms + DAY_MS - 1),
        E.ExpectColumnValuesToBeBetween(column="play_time_ms", min_value=0, max_value=cfg["max_play_time_ms"]),
        E.ExpectColumnValuesToBeBetween(column="duration_ms", min_value=0, max_value=cfg["max_duration_ms"]),
        E.ExpectColumnValuesToBeBetween(column="gen_prob", min_value=0, max_value=1),
        E.ExpectColumnValuesToBeInSet(column="source", value_set=list(SOURCES)),
        E.ExpectCompoundColumnsToBeUnique(column_list=list(EVENT_KEY)),
        E.ExpectColumnValuesToBeInSet(column="item_id", value_set=item_ids),
    ]
    ex += [E.ExpectColumnValuesToBeInSet(column=f, value_set=[0, 1]) for f in FLAGS]
    if played:
        ex.append(E.ExpectColumnMaxToBeBetween(column="play_time_ms", min_value=1))
    if user_ids is not None:
        ex.append(E.ExpectColumnValuesToBeInSet(column="user_id", value_set=user_ids))
    return ex


def items_suite(E, cfg) -> list:
    return [
        E.ExpectTableColumnsToMatchSet(column_set=TABLES["items"].names, exact_match=False), *_types(E, "items"),
        E.ExpectTableRowCountToBeBetween(min_value=1),
        E.ExpectColumnValuesToBeUnique(column="item_id"),
        E.ExpectColumnValuesToBeBetween(column="duration_ms", min_value=0, max_value=cfg["max_duration_ms"]),
    ]


def users_suite(E) -> list:
    return [
        E.ExpectTableColumnsToMatchSet(column_set=TABLES["users"].names, exact_match=False), *_types(E, "users"),
        E.ExpectColumnValuesToBeUnique(column="user_id"),
    ]


def row_bounds(history: list[int], tolerance: float) -> tuple[int, int | None]:
    """Allowed row count for the day: within +-tolerance of the mean of previous days; at least 1."""
    if not history:
        return 1, None
    mean = sum(history) / len(history)
    return max(1, math.floor(mean * (1 - tolerance))), math.ceil(mean * (1 + tolerance))


def _played(table: pa.Table) -> bool:
    col = "play_time_ms"
    return col in table.column_names and table.num_rows > 0 and table[col].null_count < table.num_rows \
        and pa.types.is_integer(table[col].type)


def _ids(table: pa.Table, col: str):
    if col not in table.column_names or not pa.types.is_integer(table[col].type):
        return None
    return sorted(int(x) for x in table[col].drop_null().unique().to_pylist())


def validate_day(tables: dict[str, pa.Table], *, date_start_ms: int, history: list[int], cfg: dict) -> dict:
    """Run the three suites; returns a JSON-able report {success, results: [...]} with example rows."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    E = gx.expectations
    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    source = ctx.data_sources.add_pandas("onerec")

    item_ids = _ids(tables["items"], "item_id") or []
    user_ids = _ids(tables["users"], "user_id") if cfg.get("referential_users", True) else None
    bounds = row_bounds(history, cfg["drift_tolerance"])
    suites = {
        "impressions": impressions_suite(E, date_start_ms=date_start_ms, item_ids=item_ids, user_ids=user_ids,
                                         row_bounds=bounds, cfg=cfg, played=_played(tables["impressions"])),
        "items": items_suite(E, cfg),
        "users": users_suite(E),
    }
    n_examples = int(cfg.get("example_rows", 5))
    results = []
    for name, expectations in suites.items():
        df = to_pandas(tables[name])
        suite = gx.ExpectationSuite(name=name, expectations=expectations)
        batch = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe("day").get_batch(
            batch_parameters={"dataframe": df})
        run = batch.validate(suite, result_format={"result_format": "COMPLETE", "partial_unexpected_count": n_examples})
        for r in run.results:
            kw = {k: v for k, v in r.expectation_config.kwargs.items() if k not in ("batch_id", "value_set")}
            entry = {"table": name, "expectation": r.expectation_config.type, "kwargs": kw, "success": bool(r.success)}
            if not r.success:
                res = r.result or {}
                entry["unexpected_count"] = res.get("unexpected_count")
                entry["observed_value"] = _jsonable(res.get("observed_value"))
                idx = (res.get("unexpected_index_list") or [])[:n_examples]
                entry["examples"] = _jsonable(df.iloc[[i for i in idx if isinstance(i, int)]].to_dict("records"))
                exc = (r.exception_info or {}).get("exception_message")
                if exc:
                    entry["error"] = exc.splitlines()[0][:300]
            results.append(entry)
    return {"success": all(r["success"] for r in results), "row_bounds": bounds, "results": results}


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if x is None or x is pd.NA or (isinstance(x, float) and math.isnan(x)):
        return None
    if hasattr(x, "tolist"):
        return x.tolist()
    return x if isinstance(x, (int, float, str, bool)) else str(x)


def summary(report: dict) -> str:
    """One headline naming every failed expectation (what a log line or an alert shows), then one line per
    failure with example rows."""
    failed = [r for r in report["results"] if not r["success"]]
    head, lines = [], []
    for r in failed:
        col = r["kwargs"].get("column") or r["kwargs"].get("column_list") or ""
        what = f"{r['unexpected_count']} unexpected" if r.get("unexpected_count") else f"observed {r.get('observed_value')}"
        if r.get("error"):
            what = r["error"]
        name = "+".join(col) if isinstance(col, (list, tuple)) else col or "*"
        head.append(f"{r['table']}.{name} {r['expectation']} ({what[:80]})")
        lines.append(f"  - {r['table']}: {r['expectation']}({col}): {what}")
        for ex in r.get("examples") or []:
            lines.append(f"      e.g. {ex}")
    first = f"{len(failed)} of {len(report['results'])} expectations failed: {'; '.join(head)}"
    return "\n".join([first, *lines])
