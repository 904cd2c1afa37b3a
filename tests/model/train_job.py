"""A tiny training job run in subprocesses by test_train.py (kill -9 / resume, two gloo ranks).

usage: python train_job.py DATA.parquet OUT_DIR [--kill-at STEP] [--batch N] [--steps N] [--strategy ddp|fsdp]
                            [--stop-after STEP]
"""
import argparse
import json
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).parent))
from helpers import rand_batch  # noqa: E402
from onerec import model as M  # noqa: E402
from onerec.store import LocalStore  # noqa: E402
from onerec.train import Checkpoints, ParquetStream, TrainConfig, train  # noqa: E402

CFG = M.debug(n_experts=4, moe_first_dense=1)


def collate(table):
    """Sample i is a fixed random example (seeded by its id) whose target depends on its features."""
    parts = [rand_batch(CFG, B=1, seed=int(i)) for i in table["idx"].to_pylist()]
    cat = lambda xs: torch.cat(xs)  # noqa: E731
    paths = {k: M.Pathway(*(cat([getattr(p.paths[k], f) for p in parts]) for f in ("item", "sid", "feat", "mask")))
             for k in parts[0].paths}
    target = cat([p.target for p in parts])
    target[:, 0] = (cat([p.paths["short"].sid[:, 0, 0] for p in parts])) % 16   # learnable signal
    return M.Batch(cat([p.user for p in parts]), paths, target)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("data"), ap.add_argument("out")
    ap.add_argument("--kill-at", type=int), ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--strategy", default="ddp"), ap.add_argument("--stop-after", type=int)
    a = ap.parse_args()
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    model = M.OneRec(CFG)
    cfg = TrainConfig(max_steps=a.steps, batch_size=a.batch, lr=3e-3, warmup_steps=4, ckpt_every=5, log_every=1,
                      peak_flops=1e9, strategy=a.strategy)
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    stream = ParquetStream([a.data], cfg.batch_size, collate, seed=1, rank=rank, world=world)
    ckpt = Checkpoints(LocalStore(a.out), "ckpt")

    def on_log(step, metrics):
        if step == a.kill_at:
            os.kill(os.getpid(), 9)

    result = train(model, stream, cfg, ckpt, on_log=on_log, progress=False, stop_after=a.stop_after)
    if rank == 0 and a.stop_after is None:
        save_file(result["state_dict"], str(Path(a.out) / "final.safetensors"))
        (Path(a.out) / "result.json").write_text(json.dumps({"losses": result["losses"],
                                                             "resumed_from": result["resumed_from"]}))


if __name__ == "__main__":
    main()
