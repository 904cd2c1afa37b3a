"""Real-data checks of the item side: our semantic IDs next to the published SID sets, fusion alignment.

  .venv/bin/python benchmarks/item_quality.py [--datasets beauty,scientific,decorec] [--quick]

For Amazon Beauty (TIGER's split) and Amazon Scientific (CollisionGenRec's file) it builds item
vectors the way the `embed` stage does (all-MiniLM-L6-v2 on the item text + hashed tags, then the
collaborative-fusion projection trained on co-engaged pairs from the review sequences), fits RQ-KMeans
SIDs, and reports next to the SID sets shipped in ../shared/data (RQ-KMeans, RQ-VAE, LETTER, ... as
published, 4 levels x 256 codes):
  collision rate (1 - distinct/items, before any collision handling), code usage per level,
  prefix purity of level 1 and levels 1-2 against the item categories (chance level alongside).
For DeCoRec's multimodal Scientific subset it compares text-only, text+image and fused vectors by
alignment (recall@10 of held-out co-engaged neighbours among the k-NN) and by SID purity.
Prints Markdown tables and writes benchmarks/results/item_quality.json. Text vectors are cached under
$ONEREC_HOME/bench_cache (the same content-hash cache as the stage), so reruns skip the encoder.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = (REPO / ".." / "shared" / "data").resolve()

from onerec.config import home  # noqa: E402
from onerec.item import fusion, metrics, rqkmeans  # noqa: E402
from onerec.item.cache import EmbeddingCache  # noqa: E402
from onerec.item.encoders import EmbedConfig, TextEncoder, content_vectors, fit_layout, text_vectors  # noqa: E402
from onerec.store import LocalStore  # noqa: E402

# Amazon's top-level Beauty departments (2014 category tree); an item's attribute names are
# "[brand |] department | sub-category | ... | leaf".
BEAUTY_DEPARTMENTS = {"Skin Care", "Hair Care", "Makeup", "Tools & Accessories", "Bath & Body", "Fragrance"}


# -- datasets ------------------------------------------------------------------------------------
def load_beauty() -> dict:
    from onerec.data import load_dataset

    root = SHARED / "amazon14_beauty_5core"
    ds = load_dataset("amazon_s3rec", str(root), name="Beauty")
    items = ds.items.sort_values("item_id").reset_index(drop=True)
    names = items["text"].fillna("").str.split(" | ", regex=False)
    dept = names.map(lambda p: next((x for x in p if x in BEAUTY_DEPARTMENTS), None))
    leaf = names.map(lambda p: p[-1] if len(p) > 1 and p[-1] not in BEAUTY_DEPARTMENTS else None)
    published = _published(sorted((root / "letter_format" / "sid_indexes_collisiongenrec").glob("*/Beauty.index.json"))
                           + [root / "letter_format" / "sid_index_LETTER_official" / "Beauty.index.json"],
                           offset=1)   # LETTER-format ids are S3-Rec ids - 1
    return {"name": "Amazon Beauty", "items": items, "impressions": ds.impressions, "labels": {"department": dept, "leaf": leaf},
            "published": published, "text_note": "attribute names (brand + category path; the bundle has no titles)"}


def load_scientific() -> dict:
    from onerec.data import load_dataset

    root = SHARED / "amazon_scientific_5core_text"
    ds = load_dataset("amazon_letter", str(root), name="Scientific")
    items = ds.items.sort_values("item_id").reset_index(drop=True)
    cats = items["tags"].map(lambda t: list(t) if t is not None else [])
    dept = cats.map(lambda c: c[1] if len(c) > 1 else None)
    leaf = cats.map(lambda c: c[-1] if len(c) > 2 else None)
    published = _published(sorted((root / "sid_indexes_collisiongenrec").glob("*/Scientific.index.json")), offset=0)
    return {"name": "Amazon Scientific", "items": items, "impressions": ds.impressions,
            "labels": {"department": dept, "leaf": leaf}, "published": published,
            "text_note": "title. brand. categories. description"}


def load_decorec() -> dict:
    """DeCoRec's Scientific subset: item text, 512-d image vectors (feat3CLS), user sequences."""
    root = SHARED / "amazon_scientific_mm_clipfeats_decorec"
    index = pd.read_csv(root / "Scientific.item2index", sep="\t", header=None, names=["asin", "item_id"])
    text = pd.read_csv(root / "Scientific.text", sep="\t", names=["asin", "text"], header=0, quoting=3)
    image = np.fromfile(root / "Scientific.feat3CLS", dtype=np.float32).reshape(-1, 512)
    items = index.merge(text, on="asin", how="left").sort_values("item_id").reset_index(drop=True)
    items["image_vector"] = list(image[items["item_id"].to_numpy()])
    inter = pd.read_csv(root / "Scientific.test.inter", sep="\t")
    seqs = [list(map(int, str(p).split())) + [int(t)] for p, t in zip(inter["item_id_list:token_seq"], inter["item_id:token"])]
    user = np.repeat(inter["user_id:token"].to_numpy(), [len(s) for s in seqs])
    flat = np.concatenate([np.asarray(s) for s in seqs])
    pos = np.concatenate([np.arange(len(s)) for s in seqs])
    imps = pd.DataFrame({"user_id": user, "item_id": flat, "ts": pos, "click": 1})
    # categories are the second sentence of the text: "Industrial & Scientific <department> <...>."
    return {"name": "DeCoRec Scientific (multimodal)", "items": items, "impressions": imps, "labels": {}, "published": {}}


def _published(paths, offset: int) -> dict:
    out = {}
    for p in paths:
        idx = json.loads(Path(p).read_text())
        ids = np.array([int(k) + offset for k in idx], dtype=np.int64)
        codes = np.array([[int(tok.split("_")[1].rstrip(">")) for tok in v] for v in idx.values()], dtype=np.int64)
        name = p.parent.name if p.parent.name != "sid_index_LETTER_official" else "letter_official"
        out[name] = (ids, codes)
    return out


# -- vectors -------------------------------------------------------------------------------------
def build_vectors(ds: dict, encoder: TextEncoder, cache, use_image: bool = True, fcfg: fusion.FusionConfig | None = None):
    items = ds["items"]
    if not use_image and "image_vector" in items:
        items = items.drop(columns=["image_vector"])
    cfg = EmbedConfig()
    t0 = time.time()
    text, encoded = text_vectors(items["text"].tolist(), encoder, cache)
    t_text = time.time() - t0
    layout = fit_layout(items, cfg, text, encoder.fingerprint)
    content = content_vectors(items, layout, text)
    ids = items["item_id"].to_numpy(dtype=np.int64)
    fcfg = fcfg or fusion.FusionConfig(progress=False)
    pairs = fusion.mine_pairs(fusion.positives(ds["impressions"]), fcfg.pair_window, fcfg.popularity_alpha)
    train_pairs, held = fusion.split_pairs(pairs, fcfg.holdout, fcfg.seed)
    a, b, w = fusion.to_rows(train_pairs, ids)
    t0 = time.time()
    model, info = fusion.train(content, a, b, w, fcfg)
    t_fusion = time.time() - t0
    fused = fusion.apply(model, content)
    ha, hb, _ = fusion.to_rows(held, ids)
    return {"ids": ids, "content": content, "fused": fused, "blocks": layout.blocks,
            "recall10_content": fusion.neighbour_recall(content, ha, hb), "recall10_fused": fusion.neighbour_recall(fused, ha, hb),
            "pairs": len(pairs), "held_pairs": int(len(ha)), "text_encoded": encoded,
            "seconds_text": round(t_text, 1), "seconds_fusion": round(t_fusion, 1)}


# -- SID evaluation ------------------------------------------------------------------------------
def evaluate(ids, codes, labels: dict, sizes=None) -> dict:
    st = metrics.level_stats(codes, sizes)
    row = {"levels": codes.shape[1], **metrics.collisions(codes),
           "utilization": [round(s["utilization"], 3) for s in st],
           "max_over_mean": [round(s["max_over_mean"], 2) for s in st]}
    for name, lab in labels.items():
        lab = np.asarray(lab, dtype=object)
        for depth in (1, 2):
            row[f"purity{depth}_{name}"] = round(metrics.prefix_purity(codes, lab, depth), 3)
            row[f"chance{depth}_{name}"] = round(metrics.random_purity(codes, lab, depth), 3)
    return row


def align_labels(ds, ids):
    pos = pd.Series(np.arange(len(ds["items"])), index=ds["items"]["item_id"].to_numpy())
    rows = pos.reindex(ids).to_numpy()
    return {k: np.asarray(v.to_numpy(), dtype=object)[rows] for k, v in ds["labels"].items()}


def run_sids(ds, vec, variants) -> list[dict]:
    out = []
    for label, which, levels, k, balanced in variants:
        cfg = rqkmeans.RQConfig(levels=levels, codebook_size=k, balanced=balanced, progress=False)
        t0 = time.time()
        _, codes, st = rqkmeans.fit(vec[which], cfg)
        row = {"sids": label, "seconds": round(time.time() - t0, 1),
               "residual_error": round(st["residual_error"][-1], 3),
               **evaluate(vec["ids"], codes, align_labels(ds, vec["ids"]), [k] * levels)}
        out.append(row)
    for name, (ids, codes) in ds["published"].items():
        out.append({"sids": f"published {name}", **evaluate(ids, codes, align_labels(ds, ids), [256] * codes.shape[1])})
    return out


def duplicate_floor(items) -> float:
    """Collision rate that identical content forces on any content-only tokenizer: 1 - distinct/items."""
    tags = items["tags"].map(lambda t: ",".join(map(str, t)) if t is not None else "")
    return 1 - (items["text"].fillna("") + "#" + tags).nunique() / len(items)


def markdown(rows: list[dict], cols: list[str]) -> str:
    head = "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n"
    return head + "\n".join("| " + " | ".join(_fmt(r.get(c, "")) for c in cols) + " |" for r in rows)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 100 else f"{v:.0f}"
    if isinstance(v, list):
        return "/".join(_fmt(x) for x in v)
    return str(v)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default="beauty,scientific,decorec")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "item_quality.json"))
    ap.add_argument("--steps", type=int, default=None, help="fusion steps (default: FusionConfig's)")
    args = ap.parse_args()

    encoder = TextEncoder()
    cache = EmbeddingCache(LocalStore(home() / "bench_cache"), encoder.fingerprint)
    loaders = {"beauty": load_beauty, "scientific": load_scientific, "decorec": load_decorec}
    results = {}
    for key in args.datasets.split(","):
        ds = loaders[key]()
        fcfg = fusion.FusionConfig(progress=False, **({"steps": args.steps} if args.steps else {}))
        print(f"\n## {ds['name']}: {len(ds['items'])} items, {len(ds['impressions'])} interactions", flush=True)
        if key == "decorec":
            rows = []
            for name, image in (("text only", False), ("text + image", True)):
                vec = build_vectors(ds, encoder, cache, use_image=image, fcfg=fcfg)
                for which in ("content", "fused"):
                    _, codes, _ = rqkmeans.fit(vec[which], rqkmeans.RQConfig(levels=3, codebook_size=64, progress=False))
                    rows.append({"vectors": f"{name}, {which}", "blocks": "+".join(b for b, _ in vec["blocks"]),
                                 "recall@10 held-out co-engaged": vec[f"recall10_{which}"], "held_pairs": vec["held_pairs"],
                                 **{k: v for k, v in metrics.collisions(codes).items() if k == "collision_rate"}})
            print(markdown(rows, ["vectors", "blocks", "recall@10 held-out co-engaged", "held_pairs", "collision_rate"]))
            results[key] = {"rows": rows}
            continue
        vec = build_vectors(ds, encoder, cache, fcfg=fcfg)
        floor = duplicate_floor(ds["items"])
        print(f"content-duplicate floor: {floor:.3f} of the items share their text and tags with another item "
              "(no content-only tokenizer can tell them apart)")
        print(f"text: {ds['text_note']}; blocks {vec['blocks']}; {vec['pairs']} co-engaged pairs, "
              f"{vec['held_pairs']} held out; alignment recall@10 content {vec['recall10_content']:.4f} -> "
              f"fused {vec['recall10_fused']:.4f} (text {vec['seconds_text']} s, fusion {vec['seconds_fusion']} s)", flush=True)
        variants = [("ours 4x256 plain, fused", "fused", 4, 256, False),
                    ("ours 4x256 balanced, fused", "fused", 4, 256, True),
                    ("ours 4x256 balanced, content only", "content", 4, 256, True),
                    ("ours 3x256 balanced, fused", "fused", 3, 256, True)]
        rows = run_sids(ds, vec, variants)
        cols = ["sids", "collision_rate", "colliding_items", "utilization", "max_over_mean",
                "purity1_department", "chance1_department", "purity2_leaf", "chance2_leaf"]
        print(markdown(rows, cols), flush=True)
        results[key] = {"items": len(ds["items"]), "text": ds["text_note"], "blocks": vec["blocks"],
                        "content_duplicate_floor": floor,
                        "alignment": {k: vec[k] for k in ("recall10_content", "recall10_fused", "pairs", "held_pairs")},
                        "rows": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(out.read_text()) if out.exists() else {}   # a partial run updates its datasets only
    out.write_text(json.dumps({**previous, **results}, indent=2, default=str))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
