"""The Spark session of the features job, from the `spark:` config section.

`master` is any Spark master (local[*] by default; spark://host:7077, k8s://https://..., yarn): the job
uses only the DataFrame API and one grouped pandas UDF, so it runs unchanged on a cluster whose
executors have this package installed (the stage image). For a local master the driver binds
127.0.0.1 and the UI is off; a cluster master gets its networking from `spark.conf` instead.

Where things run is not what they compute, so `spark:` is not hashed into the stage's manifest.
"""
from __future__ import annotations

import os
import sys

DEFAULTS = {"master": "local[*]", "shuffle_partitions": 8, "driver_memory": "2g", "conf": {}}


def get_spark(cfg: dict | None = None, app_name: str = "onerec-features"):
    """(session, created): an active session is reused (tests share one); `created` says whether the
    caller owns it and should stop it."""
    cfg = {**DEFAULTS, **(cfg or {})}
    master = str(cfg["master"])
    local = master.startswith("local")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    if local:
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")

    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return active, False
    b = (SparkSession.builder.master(master).appName(app_name)
         .config("spark.ui.enabled", "false")
         .config("spark.ui.showConsoleProgress", "false")
         .config("spark.sql.session.timeZone", "UTC")
         .config("spark.sql.shuffle.partitions", str(cfg["shuffle_partitions"]))
         .config("spark.sql.execution.arrow.pyspark.enabled", "true")
         .config("spark.sql.parquet.compression.codec", "zstd")
         .config("spark.driver.memory", str(cfg["driver_memory"])))
    if local:
        b = b.config("spark.driver.bindAddress", "127.0.0.1").config("spark.driver.host", "127.0.0.1")
    for k, v in (cfg.get("conf") or {}).items():
        b = b.config(str(k), str(v))
    spark = b.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark, True
