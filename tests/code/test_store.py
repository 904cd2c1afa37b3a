"""The artifact store and the commit protocol, on local disk and on a real S3 API (moto server)."""
from __future__ import annotations

import pyarrow as pa
import pytest

from onerec.store import LocalStore, S3Store, StageDir, open_store


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return LocalStore(tmp_path / "artifacts")
    bucket = request.getfixturevalue("s3_env")
    return open_store(f"s3://{bucket}/prefix/x")


def test_bytes_roundtrip_list_and_delete(store):
    store.write_bytes("p/2026-01-01/a/one.bin", b"1")
    store.write_bytes("p/2026-01-01/a/sub/two.bin", b"22")
    store.write_bytes("p/2026-01-01/ab/other.bin", b"3")  # a sibling whose name shares the prefix
    assert store.read_bytes("p/2026-01-01/a/sub/two.bin") == b"22"
    assert store.exists("p/2026-01-01/a/one.bin") and not store.exists("p/2026-01-01/a/nope")
    assert store.list("p/2026-01-01/a") == ["p/2026-01-01/a/one.bin", "p/2026-01-01/a/sub/two.bin"]
    store.delete_prefix("p/2026-01-01/a")
    assert store.list("p/2026-01-01/a") == []
    assert store.exists("p/2026-01-01/ab/other.bin")
    with pytest.raises(FileNotFoundError, match="no artifact"):
        store.read_bytes("p/missing")


def test_commit_protocol_outputs_then_manifest_then_success(store):
    d = StageDir(store, "daily", "2026-01-01", "ingest")
    table = pa.table({"x": [1, 2, 3]})
    d.write_table("t", table)
    assert not d.is_done()  # outputs alone never look finished
    d.commit({"metrics": {"rows": 3}})
    assert d.is_done()
    m = d.manifest()
    assert m["metrics"] == {"rows": 3} and set(m["outputs"]) == {"t.parquet"}
    assert d.read_table("t").equals(table)
    assert len(d.digest()) == 64


def test_failure_mid_write_leaves_nothing_that_looks_finished(store):
    d = StageDir(store, "daily", "2026-01-02", "ingest")
    d.write_table("t", pa.table({"x": [1]}))
    d.commit({})
    assert d.is_done()

    # A redo that crashes after its first output: reset() removed _SUCCESS first.
    redo = StageDir(store, "daily", "2026-01-02", "ingest")
    redo.reset()
    redo.write_table("t", pa.table({"x": [9, 9]}))  # ...and here the worker dies
    assert not redo.is_done()
    assert not store.exists(redo.key("manifest.json"))

    # The rerun starts clean and finishes.
    again = StageDir(store, "daily", "2026-01-02", "ingest")
    again.reset()
    assert store.list(again.prefix) == []
    again.write_table("t", pa.table({"x": [2]}))
    again.commit({})
    assert again.is_done() and again.read_table("t")["x"].to_pylist() == [2]


def test_s3_uri_and_endpoint(s3_env):
    s = open_store(f"s3://{s3_env}/root")
    assert isinstance(s, S3Store)
    assert s.uri("daily/2026-01-01/ingest/_SUCCESS") == f"s3://{s3_env}/root/daily/2026-01-01/ingest/_SUCCESS"
