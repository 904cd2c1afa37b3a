"""Local pipeline runner: every registered stage of the pipeline, date by date, no scheduler.

Same semantics as Airflow: a stage runs only after its upstream stages succeeded; exit 3 (a gate)
skips the rest of that date and goes on with the next date; exit 1 or 2 stops the run.
"""
from __future__ import annotations

import datetime as dt
import sys
import time

from components.contract import check_date, run_stage
from components.registry import stages_until
from onerec.config import resolved
from onerec.errors import BadInput, GateFailed


def date_range(start: str, end: str) -> list[str]:
    d0, d1 = dt.date.fromisoformat(check_date(start)), dt.date.fromisoformat(check_date(end))
    if d1 < d0:
        raise BadInput(f"--end {end} is before --start {start}")
    return [(d0 + dt.timedelta(days=i)).isoformat() for i in range((d1 - d0).days + 1)]


def run_pipeline(config: dict, start: str, end: str, *, force: bool = False, until: str | None = None) -> int:
    dates = date_range(start, end)
    stages = stages_until(config["pipeline"], until)   # e.g. backfill features only: --until features
    for date in dates:
        for stage in stages:
            t0 = time.time()
            try:
                result = run_stage(stage.name, date, config, force=force)
            except GateFailed as e:
                print(f"[{date}] {stage.name:12s} gate not passed: {e}; skipping the rest of {date}")
                break
            status = "up to date" if result.status == "skipped" else "done"
            print(f"[{date}] {stage.name:12s} {status:10s} {time.time() - t0:6.1f}s", flush=True)
    cfg = resolved(config)
    print(f"\noutputs: {cfg['store']['root']}/{cfg['pipeline']}/<date>/<stage>/")
    print(f"mlflow:  {cfg['mlflow']['tracking_uri']}  (mlflow ui --backend-store-uri {cfg['mlflow']['tracking_uri']})")
    sys.stdout.flush()
    return 0
