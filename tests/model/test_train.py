"""The training loop: schedule, resumable stream, exact resume after kill -9, two ranks == one."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from onerec.train import ParquetStream, TrainConfig, lr_at

JOB = Path(__file__).parent / "train_job.py"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "samples.parquet"
    pq.write_table(pa.table({"idx": list(range(300))}), path, row_group_size=37)   # groups cut batches
    return path


def test_warmup_then_cosine_to_the_floor():
    cfg = TrainConfig(max_steps=100, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1) and lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(10, cfg) == pytest.approx(1.0) and lr_at(100, cfg) == pytest.approx(0.1)
    assert all(lr_at(s, cfg) >= lr_at(s + 1, cfg) for s in range(10, 100))


def test_stream_is_deterministic_resumable_and_splits_ranks(data):
    ids = lambda t: t["idx"].to_pylist()  # noqa: E731
    stream = ParquetStream([str(data)], 16, ids, seed=3)
    it = stream.batches()
    first = [next(it) for _ in range(40)]           # crosses an epoch boundary (18 batches per epoch)
    epoch0 = [x for b, pos in first[:18] for x in b]
    assert len(set(epoch0)) == len(epoch0) == 288 and first[18][1]["epoch"] == 1
    assert first[17][1] == {"epoch": 0, "consumed": 288}
    resumed = ParquetStream([str(data)], 16, ids, seed=3).batches(**first[24][1])
    assert [next(resumed)[0] for _ in range(15)] == [b for b, _ in first[25:40]]
    halves = [ParquetStream([str(data)], 16, ids, seed=3, rank=r, world=2).batches() for r in (0, 1)]
    for b, _ in first[:5]:
        assert next(halves[0])[0] + next(halves[1])[0] == b


def _job(data, out, *args, env=None):
    return subprocess.run([sys.executable, str(JOB), str(data), str(out), *map(str, args)],
                          env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=300)


def test_kill_9_then_resume_equals_uninterrupted(data, tmp_path):
    full = _job(data, tmp_path / "full")
    assert full.returncode == 0, full.stderr
    killed = _job(data, tmp_path / "resumed", "--kill-at", 13)
    assert killed.returncode == -9
    assert not (tmp_path / "resumed" / "final.safetensors").exists()
    resumed = _job(data, tmp_path / "resumed")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((tmp_path / "resumed" / "result.json").read_text())["resumed_from"] == 10
    a, b = load_file(tmp_path / "full" / "final.safetensors"), load_file(tmp_path / "resumed" / "final.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    losses = json.loads((tmp_path / "full" / "result.json").read_text())["losses"]
    resumed_losses = json.loads((tmp_path / "resumed" / "result.json").read_text())["losses"]
    assert resumed_losses == losses[10:]      # the resumed run replays steps 11..20 exactly


def test_two_gloo_ranks_match_one_process_with_the_same_global_batch(data, tmp_path):
    one = _job(data, tmp_path / "one", "--steps", 8)
    assert one.returncode == 0, one.stderr
    store = tmp_path / "rendezvous"
    env = {"WORLD_SIZE": "2", "ONEREC_DIST_INIT": f"file://{store}", "GLOO_SOCKET_IFNAME": "lo"}
    procs = [subprocess.Popen([sys.executable, str(JOB), str(data), str(tmp_path / "two"), "--steps", "8"],
                              env={**os.environ, **env, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    a, b = load_file(tmp_path / "one" / "final.safetensors"), load_file(tmp_path / "two" / "final.safetensors")
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-4), k
    la = json.loads((tmp_path / "one" / "result.json").read_text())["losses"]
    lb = json.loads((tmp_path / "two" / "result.json").read_text())["losses"]
    assert la == pytest.approx(lb, rel=1e-5)


def _two_ranks(data, out, *args):
    """The job on two gloo ranks (file rendezvous, no socket to pick); returns both ranks' (code, stderr)."""
    rendezvous = f"{out}.{os.urandom(4).hex()}.rendezvous"    # a fresh file per launch: a used one hangs
    env = {"WORLD_SIZE": "2", "ONEREC_DIST_INIT": f"file://{rendezvous}", "GLOO_SOCKET_IFNAME": "lo"}
    procs = [subprocess.Popen([sys.executable, str(JOB), str(data), str(out), *map(str, args)],
                              env={**os.environ, **env, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    try:
        outs = [p.communicate(timeout=180) for p in procs]
    finally:
        for p in procs:
            p.kill()
    return [(p.returncode, o[1][-3000:]) for p, o in zip(procs, outs)]


def test_fsdp_two_ranks_save_the_full_optimizer_state_and_resume_exactly(data, tmp_path):
    """FSDP (fully_shard) on two gloo CPU ranks: each rank holds half of every Adam moment, so a checkpoint
    must gather them (rank 0's own optimizer.state_dict() is a shard). Interrupted after step 6 (last
    checkpoint at 5) and resumed, the run ends with the same weights as an uninterrupted one."""
    from onerec import model as M

    steps = ["--steps", 7, "--strategy", "fsdp"]
    for code, err in _two_ranks(data, tmp_path / "full", *steps):
        assert code == 0, err
    for code, err in _two_ranks(data, tmp_path / "resumed", *steps, "--stop-after", 6):
        assert code == 0, err
    assert not (tmp_path / "resumed" / "final.safetensors").exists()
    ckpt = tmp_path / "resumed" / "ckpt" / "step-00000005"
    opt = load_file(ckpt / "optimizer.safetensors")
    n_params = sum(p.numel() for p in M.OneRec(M.debug(n_experts=4, moe_first_dense=1)).parameters())
    for slot in ("exp_avg", "exp_avg_sq"):   # full moments, not one rank's shard
        assert sum(v.numel() for k, v in opt.items() if k.endswith("." + slot)) == n_params, slot
    for code, err in _two_ranks(data, tmp_path / "resumed", *steps):
        assert code == 0, err
    assert json.loads((tmp_path / "resumed" / "result.json").read_text())["resumed_from"] == 5
    a, b = load_file(tmp_path / "full" / "final.safetensors"), load_file(tmp_path / "resumed" / "final.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    losses = json.loads((tmp_path / "full" / "result.json").read_text())["losses"]
    assert json.loads((tmp_path / "resumed" / "result.json").read_text())["losses"] == losses[5:]
