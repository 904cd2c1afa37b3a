"""The `features` stage through the real CLI on the debug config: two dates, the second from the first's
state; a rerun is a no-op; where history comes from; the GX gate stops a bad day with exit 2."""
from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from components.registry import STAGES, get
from support import DEBUG_CONFIG, copy_home, run_cli

D1, D2 = "2026-01-01", "2026-01-02"
OUTPUTS = ("samples", "rewards", "reward_history", "user_state", "item_stats")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def home(tmp_path_factory, debug_pipeline):
    """A copy of the shared debug pipeline: features ran through the real CLI for D1, then D2 from D1's state."""
    return copy_home(debug_pipeline, tmp_path_factory.mktemp("features_home") / "onerec_home")


def _dir(home, stage, date):
    return home / "artifacts" / "daily" / date / stage


def _manifest(home, stage, date):
    return json.loads((_dir(home, stage, date) / "manifest.json").read_text())


def test_registered_after_validate():
    names = [s.name for s in STAGES]
    assert names.index("features") == names.index("validate") + 1
    s = get("features")
    assert s.upstream == ("ingest", "validate") and s.config_keys == ("features",)


def test_two_days_outputs_and_lineage(home):
    for date in (D1, D2):
        d = _dir(home, "features", date)
        assert (d / "_SUCCESS").exists()
        m = _manifest(home, "features", date)
        assert set(m["outputs"]) == {f"{n}.parquet" for n in OUTPUTS} | {"expectations.json"}
        n = _manifest(home, "ingest", date)["metrics"]["impressions"]
        assert pq.ParquetFile(d / "samples.parquet").metadata.num_rows == n == m["metrics"]["samples"]
        assert json.loads((d / "expectations.json").read_text())["success"]
    m1, m2 = _manifest(home, "features", D1), _manifest(home, "features", D2)
    # day 1 has no history; day 2 starts from day 1's state, declared (by digest) as an input
    assert set(m1["input_digests"]) == {"ingest", "validate"}
    assert m2["input_digests"]["external:state:2026-01-01"] == _digest(home, D1)
    assert m2["metrics"]["from_state"] and m2["metrics"]["short_len_mean"] > m1["metrics"]["short_len_mean"]
    # the state accumulates: every event of both days is counted once
    s1 = pq.read_table(_dir(home, "features", D1) / "user_state.parquet")
    s2 = pq.read_table(_dir(home, "features", D2) / "user_state.parquet")
    assert sum(s2["n_events"].to_pylist()) == sum(s1["n_events"].to_pylist()) + m2["metrics"]["samples"]
    assert set(s1["user_id"].to_pylist()) <= set(s2["user_id"].to_pylist())


def _digest(home, date):
    from onerec.store import LocalStore, StageDir

    return StageDir(LocalStore(home / "artifacts"), "daily", date, "features").digest()


def test_rerun_is_a_noop(home):
    before = _manifest(home, "features", D2)
    again = run_cli("run", "features", "--date", D2, "--config", DEBUG_CONFIG,
                    env={"ONEREC_HOME": str(home), "ONEREC_FAULT": ""}, check=True)
    assert "up to date" in again.stdout
    assert _manifest(home, "features", D2) == before


def test_history_falls_back_to_raw_days_when_the_state_does_not_fit(home, monkeypatch):
    from components import features
    from components.contract import StageContext
    from onerec.config import load_config, resolved
    from onerec.store import StageDir, open_store

    monkeypatch.setenv("ONEREC_HOME", str(home))

    def plan(*overrides, date=D2):
        cfg = resolved(load_config(DEBUG_CONFIG, list(overrides)))
        store = open_store(cfg["store"]["root"])
        ctx = StageContext(get("features"), "daily", date, cfg, store, StageDir(store, "daily", date, "features"))
        return features.plan(ctx), features.external_inputs(ctx)

    p, inputs = plan()
    assert p.state.date == D1 and p.history == []
    # other features parameters: yesterday's state was computed differently, so replay the raw day
    p, inputs = plan("features.short_len=10")
    assert p.state is None and [h.date for h in p.history] == [D1]
    assert {k for k in inputs if not k.startswith("vectors:")} == {"history:2026-01-01"}   # + embed's item vectors
    # a later date with a gap: the newest fitting state plus the raw days after it
    p, _ = plan(date="2026-01-04")
    assert p.state.date == D2 and p.history == []   # 2026-01-03 was never ingested


def test_a_failing_expectation_stops_the_stage_with_exit_2(home, monkeypatch, capsys, tmp_path):
    """The gate, without Spark: the job is replaced by the reference with one leaked timestamp; a forced
    recomputation of a finished day that fails the gate leaves nothing that looks done."""
    import shutil

    import pyarrow as pa

    from components.cli import main
    from onerec.features import reference, session, spark_job

    copy = tmp_path / "home"
    shutil.copytree(home, copy)
    monkeypatch.setenv("ONEREC_HOME", str(copy))
    monkeypatch.delenv("ONEREC_FAULT", raising=False)

    def fake_write(frames, out_dir):
        inp, p = frames
        out = reference.features(pq.read_table(inp.impressions), pq.read_table(inp.items), pq.read_table(inp.users),
                                 None, day_start_ms=inp.day_start_ms, params=p)
        rows = out["samples"].to_pylist()
        r = next(r for r in rows if r["short_ts"])
        r["short_ts"][-1] = r["ts"] + 1          # a "context" event after the impression
        out["samples"] = pa.Table.from_pylist(rows, schema=out["samples"].schema)
        files = {}
        for name, t in out.items():
            files[name] = tmp_path / "job" / f"{name}.parquet"
            files[name].parent.mkdir(exist_ok=True)
            pq.write_table(t, files[name])
        return files

    monkeypatch.setattr(spark_job, "build", lambda spark, inp, p: (inp, p))
    monkeypatch.setattr(spark_job, "write", fake_write)
    monkeypatch.setattr(session, "get_spark", lambda cfg=None: (None, False))
    capsys.readouterr()
    code = main(["run", "features", "--date", D1, "--config", str(DEBUG_CONFIG), "--force"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "features expectations failed for 2026-01-01" in err
    assert "expect_column_pair_values_a_to_be_greater_than_b(ts, context_max_ts): 1 unexpected" in err
    d = _dir(copy, "features", D1)
    assert not (d / "_SUCCESS").exists() and not (d / "samples.parquet").exists()


def test_spark_reads_and_writes_through_an_s3_store(s3_env, tmp_path):
    """With s3:// the job's inputs are copied to local files and its outputs uploaded through the
    StageDir (digests in the manifest); the local store hands Spark its own files."""
    from components.features import _local, _put
    from onerec.store import LocalStore, StageDir, open_store

    s3 = open_store(f"s3://{s3_env}/artifacts")
    src = StageDir(s3, "daily", D1, "ingest")
    src.write_bytes("impressions.parquet", b"PAR1 bytes")
    path = _local(src, "impressions.parquet", tmp_path)
    assert open(path, "rb").read() == b"PAR1 bytes" and str(path).startswith(str(tmp_path))
    out = StageDir(s3, "daily", D1, "features")
    (tmp_path / "part.parquet").write_bytes(b"result")
    _put(out, "samples.parquet", tmp_path / "part.parquet")
    assert out.read_bytes("samples.parquet") == b"result" and out.outputs["samples.parquet"]["bytes"] == 6

    local = StageDir(LocalStore(tmp_path / "store"), "daily", D1, "features")
    _put(local, "samples.parquet", tmp_path / "part.parquet")
    assert _local(local, "samples.parquet", tmp_path) == str(tmp_path / "store" / local.key("samples.parquet"))
    assert local.outputs["samples.parquet"] == out.outputs["samples.parquet"]
