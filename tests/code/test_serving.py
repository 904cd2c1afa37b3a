"""The recommendation service and the MLflow registry bundle: API fuzzing (no 5xx), a real uvicorn server,
and the reload when the served alias moves."""
from __future__ import annotations

import json
import socket
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

ITEMS = np.arange(100, 160)


def _bundle(folder, seed):
    """A debug model with random weights over a 60-item catalog, written as a registry bundle."""
    import dataclasses

    import torch
    from safetensors.torch import save_file

    from onerec import model as M
    from onerec.item.trie import SidTrie

    torch.manual_seed(seed)
    cfg = M.debug(codebook_sizes=(4, 4, 4))
    model = M.OneRec(cfg)
    rng = np.random.default_rng(seed)
    sids = rng.integers(0, 4, (len(ITEMS), 3))
    folder.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "model.safetensors")
    (folder / "model.json").write_text(json.dumps({"model_config": dataclasses.asdict(cfg), "codebook_digest": "t"}))
    (folder / "codebook.json").write_text(json.dumps({"digest": "t", "sizes": [4, 4, 4]}))
    (folder / "trie.safetensors").write_bytes(SidTrie.build(sids, ITEMS).to_bytes())
    flat = pa.array(sids.astype("int32").ravel())
    pq.write_table(pa.table({"item_id": pa.array(ITEMS, pa.int64()),
                             "sid": pa.ListArray.from_arrays(pa.array(np.arange(0, sids.size + 1, 3, dtype=np.int32)), flat)}),
                   folder / "sids.parquet")
    return folder


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """A real MLflow registry (SQLite) holding version 1 of `onerec` under alias `champion`."""
    import mlflow

    from onerec import model_registry as R

    tmp = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.create_experiment("onerec", artifact_location=(tmp / "artifacts").as_uri())
    version = R.register(_bundle(tmp / "v1", seed=0), "onerec", tracking_uri=uri)
    R.set_alias("onerec", "champion", version, tracking_uri=uri)
    contexts = tmp / "contexts.parquet"
    pq.write_table(pa.table({"user_id": pa.array([1, 1, 2], pa.int64()), "item_id": pa.array([100, 101, 102], pa.int64()),
                             "ts": pa.array([1, 2, 3], pa.int64()),
                             "short_item_id": pa.array([[100, 101], [101, 102], [103]], pa.list_(pa.int64())),
                             "short_ts": pa.array([[0, 1], [1, 2], [2]], pa.list_(pa.int64())),
                             "pos_item_id": pa.array([[100], [], []], pa.list_(pa.int64())),
                             "pos_ts": pa.array([[0], [], []], pa.list_(pa.int64())),
                             "long_item_id": pa.array([[], [], []], pa.list_(pa.int64())),
                             "long_ts": pa.array([[], [], []], pa.list_(pa.int64()))}), contexts)
    return {"uri": uri, "tmp": tmp, "contexts": str(contexts)}


@pytest.fixture(scope="module")
def client(registry):
    from fastapi.testclient import TestClient

    from onerec.serving import ServeConfig, create_app

    app = create_app(ServeConfig(tracking_uri=registry["uri"], contexts=registry["contexts"], poll_s=0, max_n=50))
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def test_recommend_by_user_and_by_history(client):
    r = client.post("/recommend", json={"user_id": 1, "n": 5, "beam_size": 8})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_version"] == "onerec/1" and len(body["request_id"]) == 32
    assert len(body["items"]) == 5 and all(0 < it["gen_prob"] <= 1 and it["item_id"] in ITEMS for it in body["items"])
    scores = [it["score"] for it in body["items"]]
    assert scores == sorted(scores, reverse=True)
    r = client.post("/recommend", json={"history": [{"item_id": 100, "like": True}, {"item_id": 120}], "n": 60})
    assert r.status_code == 422 and "limit 50" in r.json()["detail"]
    r = client.post("/recommend", json={"history": [{"item_id": 100, "like": True}, {"item_id": 120}], "n": 50})
    assert r.status_code == 200 and len(r.json()["items"]) == 50
    assert client.get("/healthz").json() == {"status": "ok", "model_version": "onerec/1"}
    meta = client.get("/metadata").json()
    assert meta["catalog_items"] == len(ITEMS) and meta["limits"]["max_beam"] == 512 and meta["known_users"] == 2


def test_clear_4xx_messages(client):
    assert client.post("/recommend", json={"user_id": 999}).status_code == 404
    r = client.post("/recommend", json={"history": [{"item_id": 5}]})
    assert r.status_code == 422 and "unknown item_id" in r.json()["detail"]
    assert client.post("/recommend", json={"user_id": 1, "beam_size": 513}).status_code == 422
    assert client.post("/recommend", json={}).status_code == 422
    assert client.post("/recommend", content=b"{not json").status_code == 422


def test_bad_thread_count_is_refused_before_serving():
    from onerec.serving import ServeConfig, create_app, main

    with pytest.raises(ValueError, match="torch_threads"):
        create_app(ServeConfig(torch_threads=0))
    with pytest.raises(SystemExit) as exit_:
        main(["--torch-threads", "0"])
    assert exit_.value.code == 2


def test_as_of_picks_the_newest_context_at_or_before_the_time(client, registry):
    contexts = client.app.state.served.contexts
    rows = {t: contexts.row(1, t) for t in (0, 1, 2, 99, None)}
    ts = contexts.table["ts"].to_numpy()
    assert rows[0] is None and ts[rows[1]] == 1 and ts[rows[2]] == 2 and rows[99] == rows[None] == rows[2]
    assert contexts.table["user_id"].to_numpy()[rows[1]] == 1
    assert contexts.rows([1, 1, 1, 999], [0, 1, 99, 5]).tolist() == [-1, rows[1], rows[2], -1]
    r = client.post("/recommend", json={"user_id": 1, "as_of_ms": 0})
    assert r.status_code == 404 and "as_of_ms=0" in r.json()["detail"]
    assert client.post("/recommend", json={"user_id": 1, "as_of_ms": 1, "n": 3}).status_code == 200
    r = client.post("/recommend", json={"history": [{"item_id": 100}], "as_of_ms": 1})
    assert r.status_code == 422 and "user_id requests only" in r.json()["detail"]


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=5),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                           max_leaves=12)
event = st.fixed_dictionaries({"item_id": st.integers(-5, 2**64) | st.sampled_from(ITEMS.tolist())},
                              optional={"like": json_values, "ts": st.integers(-1, 2**63), "play_time_ms": json_values,
                                        "duration_ms": st.integers(-1, 10**11)})
request = st.fixed_dictionaries({}, optional={
    "user_id": st.integers(-2, 2**64) | st.sampled_from([1, 2]) | json_values,
    "history": st.lists(event, max_size=6) | json_values,
    "n": st.integers(-1, 600) | json_values, "beam_size": st.integers(-1, 600) | json_values,
    "as_of_ms": st.integers(-1, 2**64) | json_values, "junk": json_values})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=request | json_values)
def test_fuzz_never_5xx(client, body):
    # json.dumps writes NaN/Infinity tokens that strict JSON rejects: malformed bodies are fuzzed too
    r = client.post("/recommend", content=json.dumps(body).encode(), headers={"content-type": "application/json"})
    assert r.status_code < 500, (body, r.text)
    if r.status_code >= 400:
        assert r.json()["detail"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_real_server_and_reload_when_alias_moves(registry):
    import httpx
    import uvicorn

    from onerec import model_registry as R
    from onerec.serving import ServeConfig, create_app

    port = _free_port()
    app = create_app(ServeConfig(tracking_uri=registry["uri"], contexts=registry["contexts"], poll_s=0.2, port=port))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(200):
            if server.started:
                break
            time.sleep(0.05)
        first = httpx.post(f"{base}/recommend", json={"user_id": 2, "n": 3}, timeout=30).json()
        assert first["model_version"] == "onerec/1" and len(first["items"]) == 3
        v2 = R.register(_bundle(registry["tmp"] / "v2", seed=1), "onerec", tracking_uri=registry["uri"])
        R.set_alias("onerec", "champion", v2, tracking_uri=registry["uri"])
        deadline = time.time() + 30
        while httpx.get(f"{base}/healthz", timeout=10).json()["model_version"] != f"onerec/{v2}":
            assert time.time() < deadline, "the service did not follow the alias"
            time.sleep(0.1)
        second = httpx.post(f"{base}/recommend", json={"user_id": 2, "n": 3}, timeout=30).json()
        assert second["model_version"] == "onerec/2"
        assert [i["score"] for i in second["items"]] != [i["score"] for i in first["items"]]   # other weights
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        R.set_alias("onerec", "champion", "1", tracking_uri=registry["uri"])
