"""Training loop shared by pretraining and SFT: streaming data, AdamW + warmup/cosine, clipping, bf16 on GPU,
optional torch.compile, DDP/FSDP through torchrun, and exact resume from safetensors checkpoints.

Resume is exact: a checkpoint holds the model, the optimizer, the scheduler, every RNG and the data position
(samples consumed in the current epoch), and the data order is a pure function of (seed, epoch), so a run killed
at any point and resumed produces the same weights as an uninterrupted one (on CPU, deterministic kernels).
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save


@dataclass
class TrainConfig:
    max_steps: int = 200             # optimizer steps
    batch_size: int = 64             # GLOBAL batch (split over ranks)
    lr: float = 1e-3
    min_lr_ratio: float = 0.1        # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 20
    weight_decay: float = 0.1
    betas: tuple = (0.9, 0.95)
    grad_clip: float = 1.0
    seed: int = 0
    ckpt_every: int = 50             # steps between checkpoints (and one at the end)
    keep_checkpoints: int = 2
    log_every: int = 10
    bf16: bool = True                # autocast to bf16 on CUDA (ignored on CPU)
    compile: bool = False            # torch.compile the model
    strategy: str = "ddp"            # "ddp" | "fsdp" when launched with torchrun (WORLD_SIZE > 1)
    peak_flops: float = 0.0          # per device, for MFU; 0 -> measured matmul peak (CPU) or 989e12 (H100/H200 bf16)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup, then cosine decay to min_lr_ratio (multiplier of cfg.lr)."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


# ---------------------------------------------------------------------------------------------------------
# data

class ParquetStream:
    """Deterministic, resumable stream of fixed-size global batches over parquet files.

    The epoch's order is a permutation of the row groups of all files followed by a permutation inside each
    group, both drawn from (seed, epoch): memory stays one row group however many days are trained on, and a
    position (epoch, samples consumed) can be reached again without reading what lies before it.
    Each rank gets its contiguous slice of every global batch.
    """

    def __init__(self, files: list[str], batch_size: int, collate: Callable[[pa.Table], object], seed: int = 0,
                 rank: int = 0, world: int = 1, columns: list[str] | None = None):
        if batch_size % world:
            raise ValueError(f"global batch {batch_size} is not divisible by {world} ranks")
        self.files, self.batch_size, self.collate, self.seed = files, batch_size, collate, seed
        self.rank, self.world, self.columns = rank, world, columns
        self.groups = [(f, g, pq.ParquetFile(f).metadata.row_group(g).num_rows)
                       for f in files for g in range(pq.ParquetFile(f).num_row_groups)]
        self.groups = [x for x in self.groups if x[2] > 0]
        self.epoch_size = sum(n for *_, n in self.groups)
        if self.epoch_size < batch_size:
            raise ValueError(f"{self.epoch_size} samples cannot fill one batch of {batch_size}")

    def _order(self, epoch: int):
        rng = np.random.default_rng([self.seed, epoch])
        return [self.groups[i] for i in rng.permutation(len(self.groups))], rng

    def batches(self, epoch: int = 0, consumed: int = 0) -> Iterator[tuple[object, dict]]:
        """Yields (local batch, position after it) forever, epoch after epoch; drops each epoch's remainder."""
        while True:
            order, rng = self._order(epoch)
            perms = [rng.permutation(n) for *_, n in order]   # drawn in order: independent of `consumed`
            buffer, start = [], 0
            full = (self.epoch_size // self.batch_size) * self.batch_size
            for (f, g, n), perm in zip(order, perms):
                if start + n <= consumed:      # skip whole groups before the resume point without reading them
                    start += n
                    continue
                table = pq.ParquetFile(f).read_row_group(g, columns=self.columns).take(pa.array(perm))
                skip = max(0, consumed - start)
                buffer.append(table.slice(skip))
                start += n
                rows = sum(t.num_rows for t in buffer)
                while rows >= self.batch_size and consumed + self.batch_size <= full:
                    merged = pa.concat_tables(buffer).combine_chunks()
                    batch, rest = merged.slice(0, self.batch_size), merged.slice(self.batch_size)
                    buffer, rows = [rest], rest.num_rows
                    consumed += self.batch_size
                    local = batch.slice(self.rank * self.batch_size // self.world, self.batch_size // self.world)
                    yield self.collate(local), {"epoch": epoch, "consumed": consumed}
            epoch, consumed = epoch + 1, 0


# ---------------------------------------------------------------------------------------------------------
# checkpoints: safetensors for tensors, JSON for the rest; nothing is pickled

def _flatten_optimizer(state: dict) -> tuple[dict, dict]:
    tensors, meta = {}, {"param_groups": state["param_groups"], "state": {}}
    for idx, slots in state["state"].items():
        meta["state"][str(idx)] = []
        for name, val in slots.items():
            tensors[f"{idx}.{name}"] = val.contiguous() if torch.is_tensor(val) else torch.tensor(val)
            meta["state"][str(idx)].append(name)
    return tensors, meta


def _unflatten_optimizer(tensors: dict, meta: dict) -> dict:
    state = {int(idx): {name: tensors[f"{idx}.{name}"] for name in names} for idx, names in meta["state"].items()}
    return {"state": state, "param_groups": meta["param_groups"]}


def rng_state() -> dict:
    out = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        out.update({f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return out


def set_rng_state(tensors: dict) -> None:
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("cuda")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def _is_dtensor(x) -> bool:
    return type(x).__name__ == "DTensor"


def optimizer_state_dict(optimizer) -> dict:
    """The optimizer's FULL state dict, on every rank: FSDP2 keeps each slot (exp_avg, ...) as a DTensor
    shard, and `full_tensor()` all-gathers it (a collective: every rank calls this, in the same order)."""
    sd = optimizer.state_dict()
    state = {idx: {name: (v.full_tensor() if _is_dtensor(v) else v).detach().cpu() if torch.is_tensor(v) else v
                   for name, v in slots.items()} for idx, slots in sd["state"].items()}
    return {"state": state, "param_groups": sd["param_groups"]}


def load_optimizer_state_dict(optimizer, full: dict) -> None:
    """Load a FULL optimizer state (as saved by `Checkpoints`) into an optimizer whose parameters may be
    FSDP-sharded DTensors: every rank read the same full tensors, so each keeps its own shard
    (`distribute_tensor(..., src_data_rank=None)`: no communication, nothing pickled between ranks)."""
    params = [p for g in optimizer.param_groups for p in g["params"]]
    state = {}
    for idx, slots in full["state"].items():
        p = params[int(idx)]
        state[int(idx)] = {name: _shard_like(v, p) for name, v in slots.items()}
    optimizer.load_state_dict({"state": state, "param_groups": full["param_groups"]})


def _shard_like(value, param):
    if not (_is_dtensor(param) and torch.is_tensor(value) and tuple(value.shape) == tuple(param.shape)):
        return value
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(value.to(param.device), param.device_mesh, param.placements, src_data_rank=None)


class Checkpoints:
    """`<prefix>/step-00000050/{model,optimizer,rng}.safetensors + state.json + COMPLETE` in an artifact store.
    COMPLETE is written last; only complete checkpoints are resumed from."""

    def __init__(self, store, prefix: str, keep: int = 2):
        self.store, self.prefix, self.keep = store, prefix, keep

    def steps(self) -> list[int]:
        done = [k for k in self.store.list(self.prefix) if k.endswith("/COMPLETE")]
        return sorted(int(k.split("/")[-2].split("-")[1]) for k in done)

    def save(self, step: int, model_state: dict, optimizer, scheduler, position: dict, extra: dict) -> None:
        """`optimizer`: the optimizer itself, or its full (unsharded) state dict, which under FSDP every rank
        gathers with `optimizer_state_dict` before rank 0 saves (rank 0's own `state_dict()` is one shard)."""
        d = f"{self.prefix}/step-{step:08d}"
        opt_state = optimizer if isinstance(optimizer, dict) else optimizer.state_dict()
        if any(_is_dtensor(v) for slots in opt_state["state"].values() for v in slots.values()):
            raise ValueError("sharded optimizer state: gather it with onerec.train.optimizer_state_dict first")
        opt_tensors, opt_meta = _flatten_optimizer(opt_state)
        self.store.write_bytes(f"{d}/model.safetensors", st_save({k: v.contiguous() for k, v in model_state.items()}))
        self.store.write_bytes(f"{d}/optimizer.safetensors", st_save(opt_tensors))
        self.store.write_bytes(f"{d}/rng.safetensors", st_save(rng_state()))
        state = {"step": step, "position": position, "optimizer": opt_meta, "scheduler": scheduler.state_dict(), **extra}
        self.store.write_bytes(f"{d}/state.json", json.dumps(state, default=str).encode())
        self.store.write_bytes(f"{d}/COMPLETE", b"")
        for old in self.steps()[:-self.keep]:
            self.store.delete_prefix(f"{self.prefix}/step-{old:08d}")

    def load(self, step: int) -> tuple[dict, dict, dict, dict]:
        d = f"{self.prefix}/step-{step:08d}"
        state = json.loads(self.store.read_bytes(f"{d}/state.json"))
        return (st_load(self.store.read_bytes(f"{d}/model.safetensors")),
                _unflatten_optimizer(st_load(self.store.read_bytes(f"{d}/optimizer.safetensors")), state["optimizer"]),
                st_load(self.store.read_bytes(f"{d}/rng.safetensors")), state)

    def clear(self) -> None:
        self.store.delete_prefix(self.prefix)


# ---------------------------------------------------------------------------------------------------------
# distributed

def dist_env() -> tuple[int, int, torch.device]:
    """(rank, world, device) from torchrun's environment; initialises the process group when world > 1."""
    world, rank = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu")
    if world > 1 and not torch.distributed.is_initialized():
        # torchrun provides MASTER_ADDR/PORT (env://); ONEREC_DIST_INIT=file:///path rendezvous without a socket
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                             init_method=os.environ.get("ONEREC_DIST_INIT", "env://"),
                                             rank=rank, world_size=world)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return rank, world, device


def measured_peak_flops(device: torch.device, n: int = 1024) -> float:
    """Peak FLOP/s the MFU is measured against: bf16 dense peak on Hopper, a measured fp32 matmul on CPU."""
    if device.type == "cuda":
        return 989e12 if "H100" in torch.cuda.get_device_name() or "H200" in torch.cuda.get_device_name() else 312e12
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t0, reps = time.perf_counter(), 10
    for _ in range(reps):
        a @ b
    return 2 * n ** 3 * reps / (time.perf_counter() - t0)


def wrap(model: torch.nn.Module, cfg: TrainConfig, world: int, device: torch.device) -> torch.nn.Module:
    if world > 1 and cfg.strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for m in getattr(model, "moe_layers", lambda: [])():
            m.every_expert = True      # an expert unused on one rank still needs a (zero) gradient there
        for block in getattr(model, "blocks", []):
            fully_shard(block)
        model = fully_shard(model)
    elif world > 1:
        # Routed experts that got no token on this rank have no gradient: DDP must be told.
        has_moe = bool(getattr(model, "moe_layers", lambda: [])())
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None,
                                                          find_unused_parameters=has_moe)
    if cfg.compile:
        model = torch.compile(model)
    return model


def full_state_dict(model: torch.nn.Module, world: int, cfg: TrainConfig) -> dict:
    if world > 1 and cfg.strategy == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    inner = getattr(model, "_orig_mod", model)
    inner = getattr(inner, "module", inner)
    return {k: v.detach().cpu() for k, v in inner.state_dict().items()}


# ---------------------------------------------------------------------------------------------------------
# the loop

def train(model: torch.nn.Module, stream: ParquetStream, cfg: TrainConfig, ckpt: Checkpoints | None = None, *,
          flops_per_sample: float = 0.0, on_log: Callable[[int, dict], None] | None = None,
          stop_after: int | None = None, progress: bool = True) -> dict:
    """Train `model` (a OneRec) for cfg.max_steps optimizer steps; resumes from the newest complete checkpoint.

    Returns {"state_dict", "final_loss", "losses", "steps", "resumed_from", ...}. `stop_after` ends the
    call early (tests of resume) without writing a final checkpoint.
    """
    from tqdm import tqdm

    rank, world, device = dist_env()
    torch.manual_seed(cfg.seed)
    model.to(device)
    raw = model
    start_step, position, resumed_from = 0, {"epoch": 0, "consumed": 0}, None
    pending = None
    if ckpt is not None and ckpt.steps():
        resumed_from = ckpt.steps()[-1]
        weights, opt_state, rngs, state = ckpt.load(resumed_from)
        raw.load_state_dict(weights)
        start_step, position, pending = state["step"], state["position"], (opt_state, rngs, state)
    model = wrap(raw, cfg, world, device)
    # Parameter groups after wrapping: FSDP replaces parameters by sharded ones.
    decay = [p for n, p in raw.named_parameters() if p.ndim >= 2 and "norm" not in n]
    no_decay = [p for n, p in raw.named_parameters() if not (p.ndim >= 2 and "norm" not in n)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=cfg.lr, betas=tuple(cfg.betas), fused=device.type == "cuda")
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_at(s, cfg))
    sharded = world > 1 and cfg.strategy == "fsdp"
    if pending is not None:
        opt_state, rngs, state = pending
        load_optimizer_state_dict(optimizer, opt_state)
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(rngs)
    peak = cfg.peak_flops or measured_peak_flops(device)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" and cfg.bf16 else _nullcontext()

    losses, t_log, samples_log = [], time.perf_counter(), 0
    batches = stream.batches(position["epoch"], position["consumed"])
    bar = tqdm(total=cfg.max_steps, initial=start_step, desc="train", disable=not progress or rank != 0)
    step = start_step
    model.train()
    while step < cfg.max_steps:
        batch, position = next(batches)
        batch = batch.to(device)
        with amp:
            _, loss = model(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        _update_moe_bias(raw, world)
        step += 1
        loss_value = _mean_over_ranks(loss.detach(), world)
        losses.append(loss_value)
        samples_log += cfg.batch_size
        bar.update(1)
        if step % cfg.log_every == 0 or step == cfg.max_steps:
            dt = time.perf_counter() - t_log
            sps = samples_log / dt
            metrics = {"loss": loss_value, "lr": scheduler.get_last_lr()[0], "grad_norm": float(grad_norm),
                       "samples_per_s": sps, "tokens_per_s": 3 * sps,
                       "mfu": flops_per_sample * sps / (peak * world) if flops_per_sample else 0.0}
            bar.set_postfix(loss=f"{loss_value:.3f}")
            if on_log and rank == 0:
                on_log(step, metrics)
            t_log, samples_log = time.perf_counter(), 0
        if ckpt is not None and (step % cfg.ckpt_every == 0 or step == cfg.max_steps):
            state = full_state_dict(model, world, cfg)
            # under FSDP every rank holds a shard of the optimizer state: gather it on all ranks (collective)
            opt_state = optimizer_state_dict(optimizer) if sharded else optimizer
            if rank == 0:
                ckpt.save(step, state, opt_state, scheduler, position, {"train_config": asdict(cfg)})
            if world > 1:
                torch.distributed.barrier()
        if stop_after is not None and step >= stop_after:
            break
    bar.close()
    return {"state_dict": full_state_dict(model, world, cfg), "final_loss": losses[-1] if losses else float("nan"),
            "losses": losses, "steps": step, "resumed_from": resumed_from, "peak_flops": peak}


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _mean_over_ranks(x: torch.Tensor, world: int) -> float:
    if world > 1:
        x = x.clone()
        torch.distributed.all_reduce(x)
        x /= world
    return float(x)


def _update_moe_bias(model: torch.nn.Module, world: int) -> None:
    """Aux-loss-free balancing uses the GLOBAL expert load, so every replica moves its bias identically."""
    for m in getattr(model, "moe_layers", lambda: [])():
        if world > 1:
            torch.distributed.all_reduce(m.load)
        m.update_bias()
