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


def _reference_collab(sequences: dict, item_ids: np.ndarray, dim: int, window: int) -> np.ndarray:
    """Dense PPMI of the training parts (loops), then numpy's SVD: the formula of collaborative_vectors."""
    n = len(item_ids)
    at = {int(i): k for k, i in enumerate(item_ids)}
    C = np.zeros((n, n))
    for seq in sequences.values():
        train = seq[:len(seq) - 2]
        for i in range(len(train)):
            for j in range(i + 1, min(len(train), i + window + 1)):
                if train[i] != train[j]:
                    C[at[train[i]], at[train[j]]] += 1
                    C[at[train[j]], at[train[i]]] += 1
    row = C.sum(1)
    ctx = row ** 0.75
    with np.errstate(divide="ignore", invalid="ignore"):
        pmi = np.log(C * ctx.sum() / (row[:, None] * ctx[None, :]))
    ppmi = np.where((C > 0) & (pmi > 0), pmi, 0.0)
    u, s, _ = np.linalg.svd(ppmi)
    vec = u[:, :dim] * np.sqrt(s[:dim])
    norm = np.linalg.norm(vec, axis=1, keepdims=True)
    return np.where(norm > 1e-6, vec / np.maximum(norm, 1e-12), 0.0)


def test_collaborative_vectors_equal_dense_ppmi_svd_and_never_see_the_held_out_items(folder, tmp_path):
    ids = np.arange(1, 41)
    imp = loo.load(folder, CFG).impressions
    got = loo.collaborative_vectors(imp, ids, dim=4, window=2)
    want = _reference_collab(SEQUENCES, ids, 4, 2)
    assert got.shape == (40, 4)
    # the rank-4 subspace is unique up to signs of its columns: compare the item-item cosines
    assert np.allclose(got @ got.T, want @ want.T, atol=1e-5)
    seen = {i for s in SEQUENCES.values() for i in s[:len(s) - 2] if len(s) > 3}   # items of a training pair
    assert set(ids[np.abs(got).sum(1) > 0].tolist()) == seen
    # other valid / test targets (each user's last two items): the vectors do not move
    other = {u: s[:-2] + [40, 39] for u, s in SEQUENCES.items()}
    root = tmp_path / "Toys"
    root.mkdir()
    (root / "Toys.txt").write_text("".join(f"{u} {' '.join(map(str, s))}\n" for u, s in other.items()))
    (root / "Toys_item2attributes.json").write_text((folder / "Toys_item2attributes.json").read_text())
    assert np.array_equal(loo.collaborative_vectors(loo.load(root, CFG).impressions, ids, 4, 2), got)


def test_collaborative_sids_need_the_sequences_and_split_identical_text(folder, split):
    ds = loo.load(folder, CFG)
    cf = loo.LOOConfig(short_len=4, long_len=3, codebook_size=8, progress=False, collaborative=1.0, collab_dim=4)
    with pytest.raises(ValueError, match="impressions"):
        loo.item_sids(ds.items, cf)
    with pytest.warns(UserWarning):
        table, stats = loo.item_sids(ds.items, cf, impressions=ds.impressions)
    assert stats["vector_dim"] == split.info["sids"]["vector_dim"] + 4
    assert table["item_id"].to_pylist() == split.sids["item_id"].to_pylist()
