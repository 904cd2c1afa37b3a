"""Full-ranking quality of the whole pipeline on a leave-one-out sequential dataset (TIGER's Amazon Beauty table).

    .venv/bin/python benchmarks/beauty.py [--dataset ../shared/data/amazon14_beauty_5core] [--sids ours,rkmeans,rqvae]
        [--arch lazy,encdec] [--seeds 0,1,2] [--device auto|cpu|cuda] [--epochs 30] [--max-steps 0]
        [--eval-every 0] [--patience 3] [--max-valid 5000] [--time-budget-min 0] [--out FILE.json]

Protocol (TIGER / S3-Rec / P5): per user the last item is the test target, the second-to-last the validation
target, every earlier position with some history a training target (`onerec.data.leave_one_out`; the context of
a sample holds only items before its target). Full ranking over every item of the catalog through
trie-constrained beam search (`onerec.decoding.beam_search` + `resolve`); Recall/NDCG@5/10
(`onerec.evaluation.ranking_metrics`, one relevant item per user) on the test targets, after early stopping on
validation NDCG@10 (a seeded subset of `--max-valid` validation users every `--eval-every` steps; the final
validation numbers are over all users).

Item side (--sids): `ours` = item vectors built as the embed stage does (all-MiniLM-L6-v2 on the item text +
hashed attribute ids), 3 x 256 balanced RQ-KMeans, then TIGER's collision fix (`--collision extra_level`: a
4th token numbers the items that share the 3 codes), so every item has its own SID and the model decodes 4
levels. On Beauty the text is only brand + category names (the bundle has no titles or prices, which TIGER's
Sentence-T5 input also had): 74% of items share their text with another item, so the 3-level codes collide
for most items and the 4th token carries much of the item identity. Published SID sets shipped with the
dataset (`rkmeans` = RQ-KMeans, `rqvae` = TIGER-style RQ-VAE, or any folder name under
`sid_indexes_collisiongenrec/`, 4 levels x 256) replace ours; if one still has collisions, an extra level
disambiguates them the same way. `cf` (`cf<w>`: weight w, default 1) = ours with a co-occurrence block appended
to the unit content vector (`onerec.data.leave_one_out.collaborative_vectors`: PPMI + SVD of the training part
of the sequences only, so no validation or test target reaches the tokenizer): identical-text items get
distinct vectors, and the native collisions on Beauty fall from 67% to 5%.
Model (--arch): the lazy decoder-only model of `--preset` (default `small`), or the OneRec-V1 encoder-decoder
at equal non-embedding parameters; trained by `onerec.train.train` (AdamW, warmup + cosine, bf16 on GPU) on
batches collated once (`onerec.samples.collate`) and kept on the device; `--length-buckets k` sorts chunks of
k batches by history length and trims each batch to its longest history (less padding in the cross-attention;
evaluation always sorts and trims, which changes no result).

Datasets: any S3-Rec folder (`<name>.txt` + `<name>_item2attributes.json`, e.g. Beauty, Sports, Toys), a
LETTER/LC-Rec folder (`<name>.inter.json` + `<name>.item.json`, e.g. Amazon Scientific with titles), or a RecBole
MovieLens folder (`ml-100k.inter`; every rating counts as an interaction, order = rating time). Nothing is
Beauty-specific.

Two halves: the preparation (split, item vectors, SIDs: sentence-transformers + faiss) is cached under
`--prep-dir` (default `.beauty_prep/`, git-ignored); training and evaluation import only torch, numpy and
pyarrow modules, so a prepared folder can be carried to a bare GPU machine and run with `--prep-only` off.
Writes one JSON (rows: one per sids x arch x seed, with hardware, wall time, seed); `benchmarks/results_page.py`
renders the Markdown page from such JSON files.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
RESULTS = REPO / "benchmarks" / "results"
DEFAULT_DATA = (REPO / ".." / "shared" / "data" / "amazon14_beauty_5core").resolve()
SID_ALIASES = {"rkmeans": "rkmeans_native", "rqvae": "rqvae_native", "letter": "letter_native"}
KS = (5, 10)


# =====================================================================================================
# preparation (heavy imports inside: pandas, sentence-transformers, faiss)

def _detect(root: Path) -> str:
    if any(root.glob("*.inter")) and not any(root.glob("*.inter.json")):
        return "recbole"
    for sub in ("", "s3rec", "data"):
        if any(p.name.lower() != "readme.txt" for p in (root / sub).glob("*.txt")) and \
                any((root / sub).glob("*_item2attributes.json")):
            return "s3rec"
    if any(root.glob("*.inter.json")) or any(root.glob("letter_format/*.inter.json")):
        return "letter"
    return "s3rec"


def _load(root: Path, fmt: str, name: str | None):
    from onerec.data import load_dataset
    from onerec.data import leave_one_out as loo

    if fmt == "s3rec":
        return load_dataset("amazon_s3rec", str(root), name=name or loo.dataset_name(root))
    if fmt == "letter":
        return load_dataset("amazon_letter", str(root), name=name)
    ds = load_dataset("movielens_recbole", str(root), name=name)
    # leave_one_out reads the position from request_id = f"{user}-{position}": number each user's ratings by time
    imp = ds.impressions.sort_values(["user_id", "ts", "item_id"], kind="stable").reset_index(drop=True)
    imp["request_id"] = imp["user_id"].astype(str) + "-" + imp.groupby("user_id").cumcount().astype(str)
    ds.impressions = imp
    return ds


def _published(root: Path, variant: str, item_ids: np.ndarray) -> np.ndarray:
    """(n_items, levels) codes of a published SID set, in item_ids order (LETTER-format ids may be 0-based)."""
    found = sorted(root.glob(f"**/sid_indexes*/{variant}/*.index.json"))
    if not found:
        raise SystemExit(f"no published SID set {variant!r} under {root}")
    idx = json.loads(found[0].read_text())
    keys = np.array([int(k) for k in idx], dtype=np.int64)
    codes = np.array([[int(t.split("_")[1].rstrip(">")) for t in v] for v in idx.values()], dtype=np.int64)
    wanted = set(item_ids.tolist())
    offset = max((0, 1), key=lambda o: len(wanted & set((keys + o).tolist())))
    by_id = dict(zip((keys + offset).tolist(), codes))
    missing = [i for i in item_ids.tolist() if i not in by_id]
    if missing:
        raise SystemExit(f"{variant}: {len(missing)} items have no SID (e.g. {missing[:3]})")
    return np.stack([by_id[i] for i in item_ids.tolist()])


def _extra_level(codes: np.ndarray) -> np.ndarray:
    """TIGER's fix for a given SID set: append a token numbering the items that share all the codes."""
    _, inv = np.unique(codes, axis=0, return_inverse=True)
    inv = inv.ravel()
    order = np.argsort(inv, kind="stable")
    rank = np.empty(len(inv), np.int64)
    starts = np.r_[0, np.nonzero(np.diff(inv[order]))[0] + 1]
    counts = np.diff(np.r_[starts, len(inv)])
    rank[order] = np.arange(len(inv)) - np.repeat(starts, counts)
    return np.concatenate([codes, rank[:, None]], axis=1)


def _cf_weight(sids_name: str) -> float | None:
    """`cf` / `cf<w>`: our SIDs with the co-occurrence block at weight w (default 1); None for other names."""
    if not sids_name.startswith("cf"):
        return None
    try:
        w = float(sids_name[2:] or 1.0)
    except ValueError:
        return None
    return w if w > 0 else None


def prep_key(args) -> str:
    key = json.dumps([Path(args.dataset).resolve().name, args.name, args.short_len, args.long_len, args.codebook_size,
                      args.levels, args.collision, args.sid_seed, 2])
    return hashlib.sha1(key.encode()).hexdigest()[:8]


def prepare(args, sids_name: str) -> Path:
    """The split (samples.parquet) and one SID set (sids_<name>.parquet) under the prep folder; cached."""
    root = Path(args.dataset).resolve()
    folder = Path(args.prep_dir) / f"{root.name}-{prep_key(args)}"
    sids_file = folder / f"sids_{sids_name}.parquet"
    if (folder / "samples.parquet").exists() and sids_file.exists():
        return folder
    from onerec.data import leave_one_out as loo
    from onerec.item import metrics

    folder.mkdir(parents=True, exist_ok=True)
    fmt = _detect(root)
    ds = _load(root, fmt, args.name)
    cfg = loo.LOOConfig(name=args.name, short_len=args.short_len, long_len=args.long_len, levels=args.levels,
                        codebook_size=args.codebook_size, collision=args.collision, seed=args.sid_seed,
                        progress=not args.quiet)
    if not (folder / "samples.parquet").exists():
        samples = loo.split_samples(ds, cfg)
        counts = {s: int(pc.sum(pc.equal(samples["split"], s)).as_py() or 0) for s in loo.SPLITS}
        info = {"dataset": root.name, "path": str(root), "format": fmt, "users": int(ds.impressions["user_id"].nunique()),
                "items": len(ds.items), "interactions": len(ds.impressions), "samples": counts,
                "short_len": args.short_len, "long_len": args.long_len}
        pq.write_table(samples, folder / "samples.parquet", compression="zstd")
        (folder / "info.json").write_text(json.dumps(info, indent=2))
    items = ds.items.sort_values("item_id").reset_index(drop=True)
    t0 = time.perf_counter()
    collab = _cf_weight(sids_name)
    if sids_name == "ours" or collab:
        cfg = replace(cfg, collaborative=collab or 0.0)
        cache = None
        try:
            if not items["text"].notna().any():
                raise RuntimeError("the items have no text")
            from onerec.config import home
            from onerec.item.cache import EmbeddingCache
            from onerec.item.encoders import TextEncoder
            from onerec.store import LocalStore

            cache = EmbeddingCache(LocalStore(home() / "bench_cache"), TextEncoder(cfg.text_model).fingerprint)
        except Exception as e:  # noqa: BLE001 - the cache only saves time
            print(f"(no text cache: {e})")
        table, stats = loo.item_sids(items, cfg, cache, ds.impressions)
        stats["source"] = (f"RQ-KMeans {args.levels}x{args.codebook_size} balanced on all-MiniLM-L6-v2(item text) + "
                           f"hashed attributes" + (f" + {collab:g} x co-occurrence SVD of the training sequences"
                                                   if collab else "") + f"; collisions: {args.collision}")
    else:
        variant = SID_ALIASES.get(sids_name, sids_name)
        ids = items["item_id"].to_numpy(np.int64)
        codes = _published(root, variant, ids)
        native = metrics.collisions(codes)
        if native["colliding_items"]:
            codes = _extra_level(codes)
        table = pa.table({"item_id": pa.array(ids), "sid": pa.array(codes.astype(np.int32).tolist(), pa.list_(pa.int32()))},
                         schema=loo.SIDS)
        stats = {"source": f"published {variant}" + (" + extra level" if native["colliding_items"] else ""),
                 "sizes": [256] * 4 if codes.shape[1] >= 4 else [], "native": native, **metrics.collisions(codes)}
    stats["seconds"] = round(time.perf_counter() - t0, 1)
    pq.write_table(table, sids_file)
    (folder / f"sids_{sids_name}.json").write_text(json.dumps(stats, indent=2, default=str))
    return folder


# =====================================================================================================
# training and evaluation (torch / numpy / pyarrow only: runs on a bare GPU machine)

def _take(batch, idx):
    from onerec.model import Batch, Pathway

    return Batch(batch.user[idx], {k: Pathway(p.item[idx], p.sid[idx].long(), p.feat[idx], p.mask[idx])
                                   for k, p in batch.paths.items()}, batch.target[idx].long())


def collate_all(table: pa.Table, cfg, sids, device, chunk: int = 16384):
    """Every row collated once (sid stored as int32), concatenated and moved to the device."""
    import torch
    from onerec.model import Batch, Pathway
    from onerec.samples import collate

    parts = [collate(table.slice(s, chunk), cfg, sids) for s in range(0, table.num_rows, chunk)]
    cat = lambda xs: torch.cat(xs).to(device)  # noqa: E731
    paths = {k: Pathway(cat([b.paths[k].item for b in parts]), cat([b.paths[k].sid.int() for b in parts]),
                        cat([b.paths[k].feat for b in parts]), cat([b.paths[k].mask for b in parts]))
             for k in parts[0].paths}
    return Batch(cat([b.user for b in parts]), paths, cat([b.target.int() for b in parts]))


def trim(batch):
    """Cut every pathway after its last column with a real event in the batch: the dropped columns are padding
    only, which attention masks out anyway (collate pads at the end, so this is the longest history)."""
    from onerec.model import Batch, Pathway

    paths = {}
    for k, p in batch.paths.items():
        real = p.mask.any(0).nonzero()
        n = int(real.max()) + 1 if len(real) else 1
        paths[k] = Pathway(p.item[:, :n], p.sid[:, :n], p.feat[:, :n], p.mask[:, :n])
    return Batch(batch.user, paths, batch.target)


class TensorStream:
    """`onerec.train.ParquetStream`'s interface over pre-collated tensors: a permutation per (seed, epoch).

    length_buckets = k > 0 (HF's group_by_length): the permutation is cut into chunks of k batches, each chunk
    sorted by history length, its batches shuffled, and every batch trimmed to its longest history, so the
    cross-attention does not spend most of its time on padding (Beauty: 22 real of 57 context tokens on average)."""

    def __init__(self, data, batch_size: int, seed: int, length_buckets: int = 0):
        self.data, self.batch_size, self.seed, self.buckets = data, batch_size, seed, length_buckets
        self.epoch_size = len(data.target)
        if self.epoch_size < batch_size:
            raise ValueError(f"{self.epoch_size} samples cannot fill one batch of {batch_size}")
        if length_buckets:
            self.lengths = sum(p.mask.sum(1) for p in data.paths.values())

    def order(self, epoch: int):
        import torch

        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        perm = torch.randperm(self.epoch_size, generator=g)
        if not self.buckets:
            return perm
        n = (self.epoch_size // self.batch_size) * self.batch_size
        chunk = self.buckets * self.batch_size
        out = []
        for s in range(0, n, chunk):
            idx = perm[s:min(n, s + chunk)]
            idx = idx[torch.argsort(self.lengths[idx], stable=True)].view(-1, self.batch_size)
            out.append(idx[torch.randperm(len(idx), generator=g)])
        return torch.cat(out).reshape(-1)

    def batches(self, epoch: int = 0, consumed: int = 0):
        while True:
            perm = self.order(epoch).to(self.data.target.device)
            for s in range(consumed, self.epoch_size - self.batch_size + 1, self.batch_size):
                b = _take(self.data, perm[s:s + self.batch_size])
                yield (trim(b) if self.buckets else b), {"epoch": epoch, "consumed": s + self.batch_size}
            epoch, consumed = epoch + 1, 0


class OnDevice:
    """The model as `onerec.decoding` sees it, with the decoding prefixes moved to the model's device (the
    recompute path of non-lazy architectures builds them on the CPU)."""

    def __init__(self, model):
        self._m, self._dev = model, next(model.parameters()).device

    def __getattr__(self, name):
        return getattr(self._m, name)

    def expand(self, state, index):
        return self._m.expand(state, index.to(self._dev))

    def next_logits(self, state, prefix):
        return self._m.next_logits(state, prefix.to(self._dev))


def evaluate(model, data, trie, truths: np.ndarray, beam: int, batch_size: int, desc: str, progress: bool) -> dict:
    import torch
    from tqdm import tqdm

    from onerec import decoding
    from onerec.evaluation import ranking_metrics

    model.eval()
    wrapped, n = OnDevice(model), len(truths)
    ranked: list = [None] * n
    # users in order of history length, each batch trimmed to its longest: every user's beam search is its own,
    # so the order changes nothing but the padding the cross-attention reads
    order = torch.argsort(sum(p.mask.sum(1) for p in data.paths.values()).cpu(), stable=True)
    with torch.inference_mode():
        for s in tqdm(range(0, n, batch_size), desc=desc, leave=False, disable=not progress):
            idx = order[s:s + batch_size]
            gen = decoding.beam_search(wrapped, trim(_take(data, idx.to(data.target.device))), trie, beam)
            for i, recs in zip(idx.tolist(), decoding.resolve(trie, gen, max(KS))):
                ranked[i] = [r.item_id for r in recs]
    m = ranking_metrics(ranked, [{int(t)} for t in truths], KS)
    return {k: v for k, v in m.items() if not k.startswith("hr_")}


class _Stop(Exception):
    pass


def model_config(args, arch: str, sizes: tuple):
    from onerec import model as M

    pathways = (("short", args.short_len), ("positive", args.short_len), ("long", args.long_len))
    extra = {k: v for k, v in (("embed_dim", args.embed_dim), ("kv_groups", args.kv_groups),
                                ("kv_split", args.kv_split), ("kv_layers", args.kv_layers)) if v}
    lazy = M.build(args.preset, pathways=pathways, codebook_sizes=sizes, dropout=args.dropout,
                   recency_positions=args.positions, label_smoothing=args.label_smoothing, **extra)
    if arch == "lazy":
        return lazy
    import torch

    def non_emb(cfg):
        with torch.device("meta"):
            m = M.OneRec(cfg)
        return sum(p.numel() for n, p in m.named_parameters() if not n.startswith(("context.item", "context.sid")))

    target = non_emb(lazy)   # equal non-embedding parameters (benchmarks/architectures.py's rule)
    cands = [replace(lazy, arch=arch, n_layers=n, n_enc_layers=n if arch == "encdec" else 0)
             for n in range(1, 4 * lazy.n_layers + 1)]
    return min(cands, key=lambda c: abs(non_emb(c) - target))


def hardware(device) -> dict:
    import torch

    out = {"device": str(device), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
           "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
           "load_average": list(os.getloadavg())}
    if device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
        out["label"] = f"1x {out['gpu']}"
    else:
        out["label"] = f"CPU, {torch.get_num_threads()} threads ({os.cpu_count()} cores, load {out['load_average'][0]:.1f})"
    return out


def item_leaf(sids, semantic_levels: int):
    """The semantic levels, then one token that is the item's own index (0..n-1) instead of TIGER's collision
    number: the last head becomes an item-id classifier, which the trie restricts to the items under the decoded
    prefix. TIGER's number means nothing across prefixes (item 3 of one brand+category and item 3 of another
    share one output row), so with 67% of Beauty's items in shared codes that head had to tell items apart with
    rows it shares between unrelated items."""
    from onerec.samples import SidTable

    leaf = np.arange(len(sids.item_ids), dtype=np.int64)[:, None]
    return SidTable(sids.item_ids, np.concatenate([sids.sids[:, :semantic_levels], leaf], axis=1))


def run_one(args, folder: Path, sids_name: str, arch: str, seed: int, device) -> dict:
    import torch

    from onerec import model as M
    from onerec.item.trie import SidTrie
    from onerec.samples import SidTable, with_known_target
    from onerec.train import TrainConfig, train

    t_start = time.perf_counter()
    info = json.loads((folder / "info.json").read_text())
    sid_stats = json.loads((folder / f"sids_{sids_name}.json").read_text())
    sids = SidTable.from_table(pq.read_table(folder / f"sids_{sids_name}.parquet"))
    if args.item_leaf:
        sids = item_leaf(sids, len(sid_stats.get("sizes") or []) or sids.sids.shape[1] - 1)
    sizes = sids.vocab_sizes(sid_stats.get("sizes") or [])
    trie = SidTrie.build(sids.sids, sids.item_ids)
    samples = with_known_target(pq.read_table(folder / "samples.parquet"), sids)
    split = samples["split"]
    part = lambda s: samples.filter(pc.equal(split, s))  # noqa: E731
    train_t, valid_t, test_t = part("train"), part("valid"), part("test")
    rng = np.random.default_rng(seed)
    if 0 < args.max_valid < valid_t.num_rows:
        sub_t = valid_t.take(pa.array(np.sort(rng.choice(valid_t.num_rows, args.max_valid, replace=False))))
    else:
        sub_t = valid_t
    if args.max_test:   # smoke runs only: a prefix of the test users
        valid_t, test_t = valid_t.slice(0, args.max_test), test_t.slice(0, args.max_test)
        sub_t = sub_t.slice(0, args.max_test)
    cfg = model_config(args, arch, sizes)
    torch.manual_seed(seed)
    model = M.OneRec(cfg)
    t0 = time.perf_counter()
    data = {k: collate_all(t, cfg, sids, device) for k, t in
            (("train", train_t), ("sub", sub_t), ("valid", valid_t), ("test", test_t))}
    truth = {k: t["item_id"].to_numpy() for k, t in (("sub", sub_t), ("valid", valid_t), ("test", test_t))}
    collate_s = time.perf_counter() - t0
    steps_per_epoch = max(1, data["train"].target.shape[0] // args.batch)
    max_steps = args.max_steps or args.epochs * steps_per_epoch
    eval_every = min(args.eval_every or steps_per_epoch, max_steps)
    tcfg = TrainConfig(max_steps=max_steps, batch_size=args.batch, lr=args.lr, warmup_steps=min(args.warmup, max(1, max_steps // 10)),
                       weight_decay=args.weight_decay, seed=seed, log_every=eval_every, ckpt_every=10 ** 9,
                       peak_flops=1.0)
    history, best = [], {"score": -1.0, "step": 0, "state": None}
    t_train = time.perf_counter()
    eval_seconds = 0.0

    def on_log(step, m):
        nonlocal eval_seconds
        t = time.perf_counter()
        r = evaluate(model, data["sub"], trie, truth["sub"], args.beam, args.eval_batch, "valid", not args.quiet)
        eval_seconds += time.perf_counter() - t
        model.train()
        history.append({"step": step, "loss": round(m["loss"], 4), **{k: round(v, 5) for k, v in r.items()}})
        if True:   # one line per evaluation, also with --quiet (which only silences the progress bars)
            print(f"  step {step}: loss {m['loss']:.3f} valid R@10 {r['recall_at_10']:.4f} N@10 {r['ndcg_at_10']:.4f}",
                  flush=True)
        if r["ndcg_at_10"] > best["score"]:
            best.update(score=r["ndcg_at_10"], step=step,
                        state={k: v.detach().clone() for k, v in model.state_dict().items()})
        elif (step - best["step"]) // eval_every >= args.patience:
            raise _Stop("patience")
        if args.time_budget_min and time.perf_counter() - t_train > 60 * args.time_budget_min:
            raise _Stop("time budget")

    stopped = "max steps"
    try:
        train(model, TensorStream(data["train"], args.batch, seed, args.length_buckets), tcfg, on_log=on_log,
              progress=not args.quiet)
    except _Stop as e:
        stopped = str(e)
    train_s = time.perf_counter() - t_train - eval_seconds
    if best["state"] is not None:
        model.load_state_dict(best["state"])
    t1 = time.perf_counter()
    valid = evaluate(model, data["valid"], trie, truth["valid"], args.beam, args.eval_batch, "valid (all)",
                     not args.quiet) if args.full_valid else \
        next((dict((k, h[k]) for k in h if k.startswith(("recall", "ndcg"))) for h in history if h["step"] == best["step"]), {})
    test = evaluate(model, data["test"], trie, truth["test"], args.beam, args.eval_batch, "test", not args.quiet)
    # the same selected weights at other beam widths (the beam is chosen on validation, never on test)
    by_beam = {b: {"valid": evaluate(model, data["sub"], trie, truth["sub"], b, args.eval_batch, f"valid beam {b}",
                                     not args.quiet),
                   "test": evaluate(model, data["test"], trie, truth["test"], b, args.eval_batch, f"test beam {b}",
                                    not args.quiet)}
               for b in (int(x) for x in args.eval_beams.split(",") if x.strip()) if b != args.beam}
    for b, r in by_beam.items():
        print(f"   beam {b}: valid N@10 {r['valid']['ndcg_at_10']:.4f}  test R@10 {r['test']['recall_at_10']:.4f} "
              f"N@10 {r['test']['ndcg_at_10']:.4f}", flush=True)
    final_eval_s = time.perf_counter() - t1
    last = history[-1]["step"] if history else 0
    return {"dataset": info["dataset"], "sids": sids_name, "arch": arch, "seed": seed,
            "hardware": hardware(device), "layers": cfg.n_layers, "enc_layers": cfg.n_enc_layers,
            "d_model": cfg.d_model, "params": model.num_params(), "sid_levels": len(sizes), "codebook_sizes": list(sizes),
            "sid_source": sid_stats.get("source"), "sid_collision_rate_native": (sid_stats.get("native") or {}).get("collision_rate"),
            "sid_collision_rate": sid_stats.get("collision_rate"),
            "batch": args.batch, "lr": args.lr, "dropout": args.dropout, "beam": args.beam,
            "positions": cfg.recency_positions, "item_leaf": args.item_leaf, "label_smoothing": cfg.label_smoothing, "embed_dim": cfg.embed_dim,
            "kv": [cfg.kv_groups, cfg.kv_split, cfg.kv_layers], "steps_per_epoch": steps_per_epoch,
            "max_steps": max_steps, "steps_run": last, "epochs_run": round(last / steps_per_epoch, 2),
            "best_step": best["step"], "stopped": stopped, "train_samples": int(data["train"].target.shape[0]),
            "valid_users": int(len(truth["valid"] if args.full_valid else truth["sub"])), "test_users": int(len(truth["test"])),
            "collate_seconds": round(collate_s, 1), "train_seconds": round(train_s, 1),
            "train_samples_per_s": round(last * args.batch / max(train_s, 1e-9), 1),
            "eval_seconds": round(eval_seconds + final_eval_s, 1), "wall_seconds": round(time.perf_counter() - t_start, 1),
            "valid": valid, "test": test, "history": history, "by_beam": by_beam}


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default=str(DEFAULT_DATA), help="S3-Rec, LETTER or RecBole dataset folder")
    ap.add_argument("--name", default=None, help="dataset name inside the folder (default: its only one)")
    ap.add_argument("--sids", default="ours", help="comma list: ours, cf (ours + co-occurrence "
                    "block of the training sequences; cf0.5: at weight 0.5), rkmeans, rqvae, or a published folder name")
    ap.add_argument("--arch", default="lazy", help="comma list of lazy, encdec, naive")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--preset", default="small")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--max-steps", type=int, default=0, help="optimizer steps (overrides --epochs)")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=500)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--dropout", type=float, default=0.0, help="residual and context dropout of the model")
    ap.add_argument("--item-leaf", action="store_true", help="last SID token = the item's own index (an item-id "
                    "head under the semantic prefix) instead of the collision number")
    ap.add_argument("--positions", action="store_true", help="learned recency-rank embedding of the context items")
    ap.add_argument("--label-smoothing", type=float, default=0.0, help="of the per-level training cross-entropy")
    ap.add_argument("--embed-dim", type=int, default=0, help="item/SID embedding width (0: the preset's)")
    ap.add_argument("--kv-groups", type=int, default=0, help="G_kv of the lazy cross-attention (0: the preset's)")
    ap.add_argument("--kv-split", type=int, default=0, help="S_kv: 2 separates K and V (0: the preset's)")
    ap.add_argument("--kv-layers", type=int, default=0, help="L_kv: distinct context K/V sets (0: the preset's)")
    ap.add_argument("--length-buckets", type=int, default=0, help="batches per length-sorted chunk (0: plain "
                    "shuffle); batches are trimmed to their longest history")
    ap.add_argument("--eval-every", type=int, default=0, help="steps between validation evaluations (0: one epoch)")
    ap.add_argument("--patience", type=int, default=3, help="evaluations without a better valid NDCG@10")
    ap.add_argument("--max-valid", type=int, default=5000, help="validation users scored for early stopping (0: all)")
    ap.add_argument("--max-test", type=int, default=0, help="smoke runs only: evaluate the first N users (0: all)")
    ap.add_argument("--full-valid", action="store_true", help="re-score all validation users at the end (default: "
                    "report the early-stopping subset's numbers at the best step)")
    ap.add_argument("--time-budget-min", type=float, default=0.0, help="stop training after this many minutes (0: none)")
    ap.add_argument("--beam", type=int, default=32)
    ap.add_argument("--eval-beams", default="", help="comma list: also score the selected weights at these beam "
                    "widths (validation subset and test), to choose the beam on validation")
    ap.add_argument("--eval-batch", type=int, default=512)
    ap.add_argument("--short-len", type=int, default=20)
    ap.add_argument("--long-len", type=int, default=16)
    ap.add_argument("--levels", type=int, default=3)
    ap.add_argument("--codebook-size", type=int, default=256)
    ap.add_argument("--collision", default="extra_level", help="ours: extra_level | reassign | none")
    ap.add_argument("--sid-seed", type=int, default=0)
    ap.add_argument("--prep-dir", default=str(REPO / ".beauty_prep"))
    ap.add_argument("--prep-only", action="store_true", help="build the prepared folders and stop (no torch training)")
    ap.add_argument("--out", default=str(RESULTS / "beauty" / "beauty.json"))
    ap.add_argument("--quiet", action="store_true")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""    # before torch initialises CUDA: train() picks cuda when it sees one
    wall0 = time.perf_counter()
    sids_names = [s.strip() for s in args.sids.split(",") if s.strip()]
    folders = {s: prepare(args, s) for s in sids_names}
    prep_s = time.perf_counter() - wall0
    if args.prep_only:
        for s, f in folders.items():
            print(f"{s}: {f}")
        return 0
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() and args.device != "cpu" else "cpu")
    rows = []
    for s in sids_names:
        for arch in args.arch.split(","):
            for seed in (int(x) for x in args.seeds.split(",")):
                print(f"== {Path(args.dataset).name} sids={s} arch={arch} seed={seed} on {device}", flush=True)
                row = run_one(args, folders[s], s, arch, seed, device)
                t = row["test"]
                print(f"   test R@5 {t['recall_at_5']:.4f} N@5 {t['ndcg_at_5']:.4f} R@10 {t['recall_at_10']:.4f} "
                      f"N@10 {t['ndcg_at_10']:.4f}  ({row['wall_seconds']:.0f} s, best step {row['best_step']}, "
                      f"{row['stopped']})", flush=True)
                rows.append(row)
    info = json.loads((next(iter(folders.values())) / "info.json").read_text())
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "command": " ".join(["python", "benchmarks/beauty.py", *(sys.argv[1:] if argv is None else argv)]),
        "dataset": info, "protocol": "leave-one-out (last = test, second-to-last = valid), full ranking, "
                                     "trie-constrained beam search", "args": vars(args),
        "prep_seconds": round(prep_s, 1), "wall_seconds": round(time.perf_counter() - wall0, 1), "rows": rows},
        indent=1, default=str))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
