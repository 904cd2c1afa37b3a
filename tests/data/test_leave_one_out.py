"""Leave-one-out split of S3-Rec folders: invariants on a crafted folder, counts on the real Beauty one."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from onerec import model as M
from onerec.data import leave_one_out as loo
from onerec.features.common import SAMPLES
from onerec.samples import SidTable, collate
from support import shared

# user -> chronological items; lengths 3 (no train target), 5, 30 (longer than the short-term window)
SEQUENCES = {1: [5, 2, 9], 2: [1, 2, 3, 4, 5], 3: [(7 * k) % 40 + 1 for k in range(30)]}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("Toys")
    (root / "Toys.txt").write_text("".join(f"{u} {' '.join(map(str, s))}\n" for u, s in SEQUENCES.items()))
    attrs = {str(i): [i % 3, 10 + i % 4] for i in range(1, 41)}
    (root / "Toys_item2attributes.json").write_text(json.dumps(attrs))
    return root


CFG = loo.LOOConfig(short_len=4, long_len=3, codebook_size=8, progress=False)


@pytest.fixture(scope="module")
def split(folder):
    with pytest.warns(UserWarning):   # 40 items are few for the codebooks: rqkmeans says so
        return loo.build(folder, CFG)


def rows(table: pa.Table) -> list[dict]:
    return table.select(["user_id", "item_id", "request_id", "split", "short_item_id", "pos_item_id",
                         "long_item_id", "lifelong_len"]).to_pylist()


def test_one_test_and_one_valid_sample_per_user_with_the_last_two_items(split):
    assert split.info["name"] == "Toys" and split.info["users"] == 3
    for user, seq in SEQUENCES.items():
        mine = [r for r in rows(split.samples) if r["user_id"] == user]
        assert [r["item_id"] for r in mine if r["split"] == "test"] == [seq[-1]]
        assert [r["item_id"] for r in mine if r["split"] == "valid"] == [seq[-2]]
        train = [r for r in mine if r["split"] == "train"]
        assert [r["request_id"] for r in train] == [f"{user}-{p}" for p in range(1, len(seq) - 2)]


def test_context_holds_only_items_before_the_target(split):
    for r in rows(split.samples):
        seq, pos = SEQUENCES[r["user_id"]], int(r["request_id"].split("-")[1])
        before = seq[:pos]
        assert r["short_item_id"] == before[-CFG.short_len:] and r["pos_item_id"] == r["short_item_id"]
        assert r["long_item_id"] == before[max(0, pos - CFG.short_len - CFG.long_len): max(0, pos - CFG.short_len)]
        assert r["lifelong_len"] == pos
    for ts, short_ts in zip(split.samples["ts"].to_pylist(), split.samples["short_ts"].to_pylist()):
        assert all(t < ts for t in short_ts)


def test_train_targets_never_are_the_held_out_positions(split):
    held = {(u, p) for u, s in SEQUENCES.items() for p in (len(s) - 2, len(s) - 1)}
    for r in rows(loo.only(split.samples, "train")):
        assert (r["user_id"], int(r["request_id"].split("-")[1])) not in held


def test_schema_sids_and_collate(split):
    assert split.samples.schema.names[: len(SAMPLES)] == SAMPLES.names
    assert split.samples.schema.names[len(SAMPLES):] == ["profile_user_id", "split"]
    assert split.sids["item_id"].to_pylist() == list(range(1, 41))
    sids = SidTable.from_table(split.sids)
    cfg = M.debug(codebook_sizes=sids.vocab_sizes(split.info["sids"]["sizes"]),
                  pathways=(("short", 4), ("positive", 4), ("long", 3)))
    batch = collate(loo.only(split.samples, "test"), cfg, sids)
    assert (batch.target >= 0).all() and batch.paths["long"].mask.sum() == 3   # only user 3 has long history
    _, loss = M.OneRec(cfg)(batch)
    assert np.isfinite(float(loss.detach()))


def test_deterministic(folder, split):
    with pytest.warns(UserWarning):
        again = loo.build(folder, CFG)
    assert again.samples.equals(split.samples) and again.sids.equals(split.sids)


def test_name_must_be_unambiguous(tmp_path):
    for name in ("A", "B"):
        (tmp_path / f"{name}.txt").write_text("1 1 2 3 4\n")
    with pytest.raises(FileNotFoundError, match="several"):
        loo.dataset_name(tmp_path)
    assert loo.build(tmp_path, loo.LOOConfig(name="B"), with_sids=False).info["samples"] == \
        {"train": 1, "valid": 1, "test": 1}


def test_real_beauty_counts():
    split = loo.build(shared("amazon14_beauty_5core"), with_sids=False)
    info = split.info
    assert (info["users"], info["items"], info["interactions"]) == (22_363, 12_101, 198_502)
    assert info["samples"] == {"train": 198_502 - 3 * 22_363, "valid": 22_363, "test": 22_363}
    test = loo.only(split.samples, "test")
    assert test.num_rows == len(set(test["user_id"].to_pylist())) == 22_363
