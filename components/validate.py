"""`validate`: the Great Expectations gate on the day's impressions, items and users.

Row-count drift is judged against the previous `drift_days` days that passed validation; their
digests are external inputs, so a re-validated history re-runs the check. A failed gate exits 2
(never retried), prints which expectations failed with example rows, logs the report to MLflow and
writes no _SUCCESS, so nothing downstream can run.
"""
from __future__ import annotations


from onerec.errors import BadInput
from onerec.schemas import day_start_ms


def _history(ctx) -> list:
    return list(ctx.earlier_done("validate", ctx.section.get("drift_days", 7)))


def external_inputs(ctx) -> dict:
    return {f"history:{p.date}": p.digest() for p in _history(ctx)}


def run(ctx) -> dict:
    import mlflow

    from onerec.validation import summary, validate_day

    ingest = ctx.upstream("ingest")
    tables = {name: ingest.read_table(name) for name in ("impressions", "items", "users")}
    history = [p.manifest()["metrics"]["impressions"] for p in _history(ctx)]
    report = validate_day(tables, date_start_ms=day_start_ms(ctx.date), history=history, cfg=ctx.section)
    failed = sum(not r["success"] for r in report["results"])
    mlflow.log_dict(report, "validation/report.json")
    mlflow.log_metrics({"expectations": len(report["results"]), "expectations_failed": failed})
    if not report["success"]:
        mlflow.set_tag("onerec.gate", "failed")
        raise BadInput(f"validation failed for {ctx.date}: {summary(report)}")
    ctx.out.write_json("report.json", report)
    return {"impressions": tables["impressions"].num_rows, "items": tables["items"].num_rows,
            "users": tables["users"].num_rows, "expectations": len(report["results"])}
