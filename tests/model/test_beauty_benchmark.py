"""benchmarks/beauty.py end to end on a tiny crafted S3-Rec folder: the real CLI with a 2-step budget, the JSON
schema, metrics in [0, 1], a published SID set with collisions (extra level), and the results page."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
METRICS = ("recall_at_5", "ndcg_at_5", "recall_at_10", "ndcg_at_10")


def _folder(root: Path, users: int = 24, items: int = 40) -> Path:
    rng = np.random.default_rng(0)
    data = root / "Tiny"
    (data / "s3rec").mkdir(parents=True)
    lines = []
    for u in range(1, users + 1):
        seq = rng.choice(np.arange(1, items + 1), size=int(rng.integers(5, 9)), replace=False)
        lines.append(" ".join(map(str, [u, *seq])))
    (data / "s3rec" / "Tiny.txt").write_text("\n".join(lines) + "\n")
    attrs = {str(i): [int(i % 5) + 1, int(i % 3) + 6] for i in range(1, items + 1)}
    (data / "s3rec" / "Tiny_item2attributes.json").write_text(json.dumps(attrs))
    # a published 4-level SID set in LETTER format (0-based ids) with collisions: items 2k and 2k+1 share one SID
    pub = data / "letter_format" / "sid_indexes_collisiongenrec" / "rkmeans_native"
    pub.mkdir(parents=True)
    index = {str(i): [f"<a_{i // 8}>", f"<b_{(i // 2) % 4}>", f"<c_{i % 2 * 0}>", "<d_0>"] for i in range(items)}
    (pub / "Tiny.index.json").write_text(json.dumps(index))
    return data


@pytest.mark.timeout(240)
def test_beauty_cli_and_results_page(tmp_path):
    data = _folder(tmp_path)
    out = tmp_path / "res" / "run.json"
    cmd = [sys.executable, str(REPO / "benchmarks" / "beauty.py"), "--dataset", str(data), "--sids", "ours,cf,rkmeans",
           "--arch", "lazy", "--seeds", "0", "--device", "cpu", "--threads", "1", "--preset", "debug",
           "--max-steps", "2", "--eval-every", "1", "--patience", "1", "--batch", "16", "--beam", "10",
           "--max-valid", "8", "--length-buckets", "2", "--eval-beams", "4,10", "--positions", "--label-smoothing", "0.1", "--short-len", "4", "--long-len", "2", "--codebook-size", "4",
           "--prep-dir", str(tmp_path / "prep"), "--out", str(out), "--quiet"]
    env = {**os.environ, "ONEREC_HOME": str(tmp_path / "home"), "TQDM_DISABLE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=230)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["dataset"]["samples"]["test"] == 24 and doc["dataset"]["items"] == 40
    rows = doc["rows"]
    assert [(r["sids"], r["arch"], r["seed"]) for r in rows] == [("ours", "lazy", 0), ("cf", "lazy", 0), ("rkmeans", "lazy", 0)]
    for r in rows:
        for key in ("hardware", "wall_seconds", "train_seconds", "eval_seconds", "best_step", "steps_run", "params",
                    "codebook_sizes", "history", "stopped"):
            assert key in r, key
        assert r["steps_run"] == 2 and r["test_users"] == 24
        for split in ("test", "valid"):
            assert set(METRICS) <= set(r[split])
            assert all(0.0 <= r[split][m] <= 1.0 for m in METRICS)
        assert r["sid_collision_rate"] == 0.0          # every item has its own SID
        assert list(r["by_beam"]) == ["4"] and set(METRICS) <= set(r["by_beam"]["4"]["test"])   # 10 is the main beam
        assert r["positions"] and r["label_smoothing"] == 0.1
    ours, cf, pub = rows
    assert ours["sid_levels"] == 4                      # 3 RQ-KMeans levels + the disambiguation token
    # 15 distinct attribute texts for 40 items: the co-occurrence block splits the items that share one
    assert cf["sid_collision_rate_native"] < ours["sid_collision_rate_native"]
    assert pub["sid_levels"] == 5 and pub["sid_collision_rate_native"] == 0.5   # published 4 levels collide: + 1

    sys.path.insert(0, str(REPO / "benchmarks"))
    import results_page

    page_file = tmp_path / "page.md"
    assert results_page.main([str(out.parent), "--out", str(page_file)]) == 0
    page = page_file.read_text()
    assert "TIGER (TIGER paper)" in page and "| Tiny | ours | lazy | 0 |" in page
    assert page.count("\n| Tiny |") == 6     # 1 summary row + 1 run row per SID set
    # a second seed of one setting, run while the host's load differed, pools into one mean +- std row
    first = results_page.load_rows([out])[0]
    second = {**first, "seed": 1, "test": {**first["test"], "recall_at_10": first["test"]["recall_at_10"] + 0.01},
              "hardware": {**first["hardware"], "load_average": [9.9, 9.9, 9.9],
                           "label": "CPU, 1 threads (2 cores, load 9.9)"}}
    pooled = results_page.render([first, second])
    assert "| 0,1 |" in pooled and pooled.count("\n| Tiny |") == 3 and " ± 0.0071 |" in pooled


def _beauty():
    sys.path.insert(0, str(REPO / "benchmarks"))
    import beauty

    return beauty


def test_length_buckets_keep_every_sample_once_per_epoch_and_trim_only_padding():
    import torch

    from helpers import rand_batch
    from onerec import model as M

    beauty = _beauty()
    cfg = M.debug()
    data = rand_batch(cfg, B=100, seed=1, fill=0.5)
    for p in data.paths.values():      # collate's layout: real events first, padding after
        n = p.mask.sum(1, keepdim=True)
        p.mask = torch.arange(p.mask.shape[1])[None] < n
    rid = torch.arange(100)           # row id carried in the target's first two levels (codebooks of 16)
    data.target = torch.stack([rid % 16, rid // 16, torch.zeros_like(rid)], 1)
    stream = beauty.TensorStream(data, 8, seed=3, length_buckets=4)
    it = stream.batches()
    seen, widths = [], []
    for _ in range(12):                # 12 full batches of 8 = one epoch (96 of 100 rows)
        b, pos = next(it)
        rows = b.target[:, 0] + 16 * b.target[:, 1]
        seen += rows.tolist()
        for name, p in b.paths.items():
            full = data.paths[name]
            assert torch.equal(p.mask.sum(1), full.mask[rows].sum(1))            # no real event dropped
            assert torch.equal(p.item, full.item[rows][:, :p.item.shape[1]])
            widths.append(p.item.shape[1])
    assert pos == {"epoch": 0, "consumed": 96} and len(set(seen)) == 96
    assert min(widths) < max(p.mask.shape[1] for p in data.paths.values())     # some batch got shorter
    again = beauty.TensorStream(data, 8, seed=3, length_buckets=4)
    assert torch.equal(stream.order(0), again.order(0)) and not torch.equal(stream.order(0), stream.order(1))
    torch.manual_seed(0)
    model = M.OneRec(cfg).eval()
    first = next(beauty.TensorStream(data, 8, seed=3, length_buckets=4).batches())[0]
    rows = first.target[:, 0] + 16 * first.target[:, 1]
    untrimmed = beauty._take(data, rows)
    untrimmed.target = first.target
    assert torch.allclose(model(first)[1], model(untrimmed)[1], atol=1e-6)      # trimming changes no loss


def test_sorted_trimmed_evaluation_equals_plain_beam_search():
    import numpy as np
    import torch

    from helpers import rand_batch
    from onerec import decoding
    from onerec import model as M
    from onerec.evaluation import ranking_metrics
    from onerec.item.trie import SidTrie

    beauty = _beauty()
    cfg = M.debug(codebook_sizes=(4, 4, 3))
    torch.manual_seed(0)
    model = M.OneRec(cfg)
    rng = np.random.default_rng(0)
    codes = np.unique(rng.integers(0, [4, 4, 3], size=(40, 3)), axis=0)
    items = np.arange(1, len(codes) + 1)
    trie = SidTrie.build(codes, items)
    data = rand_batch(cfg, B=30, seed=2, fill=0.5)
    for p in data.paths.values():
        p.mask = torch.arange(p.mask.shape[1])[None] < p.mask.sum(1, keepdim=True)
    truths = rng.choice(items, 30)
    got = beauty.evaluate(model, data, trie, truths, beam=6, batch_size=7, desc="t", progress=False)
    with torch.inference_mode():
        gen = decoding.beam_search(model.eval(), data, trie, 6)
        ranked = [[r.item_id for r in recs] for recs in decoding.resolve(trie, gen, 10)]
    want = ranking_metrics(ranked, [{int(t)} for t in truths], (5, 10))
    assert got == {k: v for k, v in want.items() if not k.startswith("hr_")} and got["recall_at_10"] > 0


def test_item_leaf_keeps_the_semantic_prefix_and_gives_every_item_its_own_last_token():
    from onerec.item.trie import SidTrie
    from onerec.samples import SidTable

    beauty = _beauty()
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 3, size=(50, 3))                          # 27 prefixes for 50 items: many shared
    extra = np.zeros((50, 1), dtype=np.int64)
    for key in {tuple(c) for c in codes}:                             # TIGER's collision number
        rows = np.nonzero((codes == key).all(1))[0]
        extra[rows, 0] = np.arange(len(rows))
    ids = np.arange(100, 150)
    table = SidTable(ids, np.concatenate([codes, extra], 1))
    leaf = beauty.item_leaf(table, 3)
    assert np.array_equal(leaf.item_ids, ids) and np.array_equal(leaf.sids[:, :3], codes)
    assert np.array_equal(leaf.sids[:, 3], np.arange(50)) and leaf.vocab_sizes([3, 3, 3]) == (3, 3, 3, 50)
    assert table.vocab_sizes([3, 3, 3])[3] < 50                       # the collision number's vocabulary is smaller
    trie = SidTrie.build(leaf.sids, leaf.item_ids)                   # a valid trie: one leaf per item
    assert trie.depth == 4
    # no extra level yet (3 columns, 3 semantic levels): the leaf is appended
    assert beauty.item_leaf(SidTable(ids, codes), 3).sids.shape == (50, 4)
