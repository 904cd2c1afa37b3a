"""User context, training samples, duration-aware rewards and item statistics (the `features` stage).

- `spark_job`: the PySpark job (any Spark master); `session`: its SparkSession from the `spark:` config.
- `reference`: a small pandas implementation of every output; tests assert Spark == reference.
- `common`: parameters (`features:` config) and the output schemas; `reward`: duration buckets and the
  percentile rank q; `longterm`: the lifelong-items k-means shared by both engines.
- `expectations`: the Great Expectations gate on the outputs.
Importing this package imports none of them (pyspark and great_expectations load on first use).
"""
