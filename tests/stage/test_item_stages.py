"""`embed` and `tokenize` through the real CLI on the debug world, two days: day 2 keeps every day-1
SID and codes only the new items; reruns are no-ops; a refit writes the old->new remap; corrupt or
empty embedding input fails with exit 2 and writes nothing."""
from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from support import DEBUG_CONFIG, copy_home, run_cli

D1, D2 = "2026-01-01", "2026-01-02"


def out(home, stage, date, pipeline="daily"):
    return home / "artifacts" / pipeline / date / stage


def table(home, stage, date, name):
    return pq.read_table(out(home, stage, date) / f"{name}.parquet")


@pytest.fixture(scope="module")
def two_days(tmp_path_factory, debug_pipeline):
    """A copy of the shared debug pipeline: embed and tokenize ran through the real CLI for D1 and D2."""
    home = copy_home(debug_pipeline, tmp_path_factory.mktemp("items") / "onerec_home")
    return home, {"ONEREC_HOME": str(home), "ONEREC_FAULT": ""}


def sids_of(home, date):
    t = table(home, "tokenize", date, "sids")
    return dict(zip(t["item_id"].to_pylist(), map(tuple, t["sid"].to_pylist())))


def test_vectors_have_the_schema_the_features_stage_reads(two_days):
    home, _ = two_days
    t = table(home, "embed", D1, "vectors")
    assert t.schema.field("item_id").type == pa.int64() and t.schema.field("vector").type == pa.list_(pa.float32())
    items = table(home, "ingest", D1, "items")
    assert sorted(t["item_id"].to_pylist()) == sorted(items["item_id"].to_pylist())
    v = np.stack(t["vector"].to_numpy(zero_copy_only=False))
    assert v.shape[1] == 64 and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    enc = json.loads((out(home, "embed", D1) / "encoder.json").read_text())
    assert enc["refit"] and {"text", "tags", "author", "numeric"} <= {b for b, _ in enc["blocks"]}
    m = json.loads((out(home, "embed", D1) / "manifest.json").read_text())["metrics"]
    assert m["pairs"] > 100 and 0 <= m["recall10_content"] <= 1 and 0 <= m["recall10_fused"] <= 1


def test_day_two_keeps_every_sid_and_codes_only_new_items(two_days):
    home, _ = two_days
    day1, day2 = sids_of(home, D1), sids_of(home, D2)
    assert all(day2[i] == sid for i, sid in day1.items())               # existing SIDs unchanged
    items2 = set(table(home, "ingest", D2, "items")["item_id"].to_pylist())
    new = items2 - set(day1)
    assert len(new) == 20 and set(day2) == items2                        # every item has exactly one SID
    assert len(set(day2.values())) == len(day2)                          # no SID shared by two items
    m1 = json.loads((out(home, "tokenize", D1) / "manifest.json").read_text())["metrics"]
    m2 = json.loads((out(home, "tokenize", D2) / "manifest.json").read_text())["metrics"]
    assert m1["refit"] == 1 and m2["refit"] == 0 and m2["new_items"] == 20
    assert m1["level0_codebook_size"] == 50 and m1["level0_max_over_mean"] <= 1.1   # reduced, balanced
    cb1 = json.loads((out(home, "tokenize", D1) / "codebook.json").read_text())
    cb2 = json.loads((out(home, "tokenize", D2) / "codebook.json").read_text())
    assert cb1["digest"] == cb2["digest"] and not (out(home, "tokenize", D2) / "remap.parquet").exists()
    e2 = json.loads((out(home, "embed", D2) / "manifest.json").read_text())["metrics"]
    assert e2["refit"] == 0 and e2["text_encoded"] <= 20                 # only new texts were encoded
    v1, v2 = table(home, "embed", D1, "vectors"), table(home, "embed", D2, "vectors")
    same = dict(zip(v1["item_id"].to_pylist(), v1["vector"].to_pylist()))
    assert all(np.allclose(same[i], v) for i, v in zip(v2["item_id"].to_pylist(), v2["vector"].to_pylist()) if i in same)


def test_trie_accepts_exactly_the_assigned_sids(two_days):
    from onerec.item.trie import SidTrie

    home, _ = two_days
    day2 = sids_of(home, D2)
    trie = SidTrie.from_bytes((out(home, "tokenize", D2) / "trie.safetensors").read_bytes())
    assert {tuple(s) for s in trie.sids().tolist()} == set(day2.values())
    for item, sid in list(day2.items())[:50]:
        assert trie.items_of(sid).tolist() == [item]
    sid_items = table(home, "tokenize", D2, "sid_items")
    assert sid_items.num_rows == len(day2) and all(len(x) == 1 for x in sid_items["item_ids"].to_pylist())


def test_first_level_is_purer_than_chance_on_the_true_topics(two_days):
    from onerec.item import metrics

    home, _ = two_days
    items = table(home, "ingest", D2, "items").to_pandas().set_index("item_id")
    day2 = sids_of(home, D2)
    ids = sorted(day2)
    sids = np.array([day2[i] for i in ids])
    topics = items.loc[ids, "topic"].to_numpy()
    assert metrics.prefix_purity(sids, topics, 1) > metrics.random_purity(sids, topics, 1) + 0.3


def test_rerun_is_a_noop_and_shared_artifacts_are_not_rewritten(two_days):
    home, env = two_days
    shared = sorted(p.relative_to(home) for p in (home / "artifacts" / "shared").rglob("*") if p.is_file())
    for stage in ("embed", "tokenize"):
        again = run_cli("run", stage, "--date", D2, "--config", DEBUG_CONFIG, env=env, check=True)
        assert "up to date" in again.stdout
    assert sorted(p.relative_to(home) for p in (home / "artifacts" / "shared").rglob("*") if p.is_file()) == shared


@pytest.fixture
def copy_of(two_days, tmp_path):
    home, _ = two_days
    dst = copy_home(home, tmp_path / "onerec_home")
    return dst, {"ONEREC_HOME": str(dst), "ONEREC_FAULT": ""}


def test_refit_writes_the_old_to_new_remap(copy_of):
    home, env = copy_of
    day1 = sids_of(home, D1)
    run_cli("run", "tokenize", "--date", D2, "--config", DEBUG_CONFIG, "--set", "tokenize.refit=true",
            "--set", "tokenize.seed=1", env=env, check=True)
    remap = table(home, "tokenize", D2, "remap")
    day2 = sids_of(home, D2)
    assert sorted(remap["item_id"].to_pylist()) == sorted(day1)
    for item, old, new in zip(remap["item_id"].to_pylist(), remap["old_sid"].to_pylist(), remap["new_sid"].to_pylist()):
        assert tuple(old) == day1[item] and tuple(new) == day2[item]
    assert len(set(day2.values())) == len(day2)
    cb = json.loads((out(home, "tokenize", D2) / "codebook.json").read_text())
    assert cb["refit"] and cb["refit_reason"] == "tokenize.refit"


def test_corrupt_or_empty_embedding_input_exits_2_and_writes_nothing(copy_of):
    home, env = copy_of
    vectors = out(home, "embed", D2) / "vectors.parquet"
    empty = io.BytesIO()
    pq.write_table(pq.read_table(vectors).slice(0, 0), empty)
    for corrupt, message in ((b"not a parquet file", "unreadable"), (empty.getvalue(), "no vectors")):
        vectors.write_bytes(corrupt)      # (NaN, ragged and null vectors: tests/data/test_embed_inputs.py)
        proc = run_cli("run", "tokenize", "--date", D2, "--config", DEBUG_CONFIG, "--force", env=env)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
        d = out(home, "tokenize", D2)
        assert not (d / "_SUCCESS").exists() and not any(d.glob("*.parquet"))
