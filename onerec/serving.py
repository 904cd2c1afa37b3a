"""The recommendation service: FastAPI + uvicorn, bound to 127.0.0.1 unless told otherwise.

  POST /recommend  {"user_id": 7} or {"history": [{"item_id": 3, "like": true}, ...]}, "n", "beam_size"
                   -> top-n items with score (log P(SID)), gen_prob, sid, request id, model version
  GET  /healthz    liveness + the served model version
  GET  /metadata   model name/alias/version, codebook, catalog size, limits, model config

The model comes from the MLflow registry by alias (`champion` by default, onerec.model_registry) and a
background thread re-resolves the alias every `poll_s` seconds, swapping in the new version when it moved
(requests in flight finish on the old one). Every served item carries `gen_prob`, the probability that this
policy serves it (onerec.decoding), so logged exposures can feed RL as pi_old.
A `user_id` request reads the user's context from a features `samples.parquet` (`contexts`): the newest row
of that user, or with `as_of_ms` the newest row at or before that time (a samples row at ts holds the context
built strictly before ts, so replaying a logged request at its own timestamp is leak-free). An explicit history feeds the short-term pathway and,
for liked/followed/80%-watched events, the positive pathway; the lifelong pathway stays empty.
Bad requests get 4xx with a clear message (422 malformed or out of bounds, 404 unknown user), never 5xx.

Run: python -m onerec.serving --tracking-uri sqlite:///$ONEREC_HOME/mlflow.db --contexts .../samples.parquet
"""
from __future__ import annotations

import argparse
import logging
import threading
import time
import uuid
from dataclasses import asdict, dataclass, fields

import numpy as np
import pyarrow as pa
from fastapi import FastAPI, HTTPException
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from onerec import decoding, model_registry

log = logging.getLogger("onerec.serving")
INT64_MAX = 2**63 - 1


@dataclass
class ServeConfig:
    model_name: str = model_registry.DEFAULT_NAME   # registered model in MLflow
    alias: str = model_registry.CHAMPION             # served alias; the service follows it when it moves
    tracking_uri: str | None = None                  # None: MLflow's default (MLFLOW_TRACKING_URI)
    contexts: str | None = None                      # samples.parquet for user_id requests (newest row per user)
    host: str = "127.0.0.1"                          # loopback unless deliberately exposed
    port: int = 8000
    default_n: int = 10
    max_n: int = 200                                 # items per response
    default_beam: int = 128
    max_beam: int = decoding.MAX_BEAM                # beam search width bound (latency grows ~linearly)
    max_history: int = 1000                          # events in an explicit history
    poll_s: float = 30.0                             # alias re-resolution period; 0 = never reload
    bundle: str | None = None                        # serve a local bundle folder instead (benchmarks, debugging)
    torch_threads: int = 1                           # intra-op threads of the inference thread: a request is
                                                     # ~100 small matmuls, where a second thread costs more in
                                                     # synchronisation than it saves (benchmarks/serving.py)


class Event(BaseModel):
    model_config = ConfigDict(extra="forbid")
    item_id: int = Field(ge=0, le=INT64_MAX)
    ts: int | None = Field(None, ge=0, le=INT64_MAX // 2, description="ms since epoch; default: in order, before now")
    play_time_ms: int = Field(0, ge=0, le=10**10)
    duration_ms: int = Field(0, ge=0, le=10**10)
    like: bool = False
    follow: bool = False


class RecommendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: int | None = Field(None, ge=0, le=INT64_MAX)
    history: list[Event] | None = None
    as_of_ms: int | None = Field(None, ge=0, le=INT64_MAX, description="user_id only: the context as of this time")
    n: int | None = Field(None, ge=1)
    beam_size: int | None = Field(None, ge=1)


class Item(BaseModel):
    item_id: int
    score: float          # log P(SID) under the model
    gen_prob: float       # probability that this policy serves this item (pi_old for RL)
    sid: list[int]


class RecommendResponse(BaseModel):
    request_id: str
    model_version: str
    items: list[Item]
    took_ms: float


class Served:
    """The loaded bundle, swapped atomically when the alias moves."""

    def __init__(self, cfg: ServeConfig, bundle: model_registry.Bundle | None = None):
        self.cfg, self.lock = cfg, threading.Lock()
        self.bundle = bundle or self._load()
        self.contexts = Contexts.read(cfg.contexts)

    def _load(self) -> model_registry.Bundle:
        version = model_registry.resolve_alias(self.cfg.model_name, self.cfg.alias, self.cfg.tracking_uri)
        if version is None:
            raise RuntimeError(f"no model version {self.cfg.model_name}@{self.cfg.alias} in the MLflow registry")
        return model_registry.load_version(version, tracking_uri=self.cfg.tracking_uri)

    def reload_if_moved(self) -> bool:
        version = model_registry.resolve_alias(self.cfg.model_name, self.cfg.alias, self.cfg.tracking_uri)
        if version is None or str(version.version) == self.bundle.version:
            return False
        bundle = model_registry.load_version(version, tracking_uri=self.cfg.tracking_uri)
        with self.lock:
            self.bundle = bundle
        log.info("now serving %s@%s = version %s", self.cfg.model_name, self.cfg.alias, bundle.version)
        return True

    @property
    def version(self) -> str:
        return f"{self.cfg.model_name}/{self.bundle.version}"


class Contexts:
    """A features `samples` table indexed for context lookups, rows sorted by (user, ts). A samples row at ts
    holds the context built strictly before ts, so the row for a request at time t is the user's newest row at
    or before t (leak-free replay); without a time, the user's newest row."""

    def __init__(self, table: pa.Table | None = None):
        if table is None:
            table = pa.table({"user_id": pa.array([], pa.int64()), "ts": pa.array([], pa.int64())})
        users, ts = table["user_id"].to_numpy(), table["ts"].to_numpy()
        order = np.lexsort((ts, users))
        self.table, self.users, self.ts = table.take(pa.array(order)), users[order], ts[order]
        starts = np.r_[0, np.nonzero(self.users[1:] != self.users[:-1])[0] + 1] if len(users) else np.zeros(0, np.int64)
        ends = np.r_[starts[1:], len(users)]
        self.span = {int(self.users[a]): (int(a), int(b)) for a, b in zip(starts, ends)}

    @classmethod
    def read(cls, path: str | None) -> "Contexts":
        import pyarrow.parquet as pq

        return cls(pq.read_table(path) if path else None)

    def row(self, user_id: int, as_of_ms: int | None = None) -> int | None:
        """Row of `table` with the user's context (newest at or before `as_of_ms`); None when there is none."""
        span = self.span.get(user_id)
        if span is None:
            return None
        a, b = span
        if as_of_ms is None:
            return b - 1
        i = a + int(np.searchsorted(self.ts[a:b], as_of_ms, side="right")) - 1
        return i if i >= a else None

    def rows(self, user_ids, as_of_ms) -> np.ndarray:
        """`row` for many requests at once; -1 where there is none."""
        found = (self.row(int(u), int(t)) for u, t in zip(user_ids, as_of_ms))
        return np.fromiter((-1 if r is None else r for r in found), np.int64, count=len(user_ids))


def _history_record(events: list[Event], now_ms: int | None = None) -> tuple[dict[str, np.ndarray], int]:
    """An explicit history -> (list columns of one samples.parquet row, the row's ts): every event feeds the
    short-term pathway, liked/followed/80%-watched ones the positive pathway, the lifelong pathway is empty.
    Events without ts are spaced 1 s apart, the newest 1 s before now."""
    now = int(time.time() * 1000) if now_ms is None else now_ms
    n = len(events)

    def column(values):
        return np.fromiter(values, np.int64, count=n)

    items, play, dur = (column(e.item_id for e in events), column(e.play_time_ms for e in events),
                        column(e.duration_ms for e in events))
    ts = column(e.ts if e.ts is not None else now - (n - i) * 1000 for i, e in enumerate(events))
    like, follow = column(e.like for e in events), column(e.follow for e in events)
    positive = (like > 0) | (follow > 0) | ((dur > 0) & (play >= 0.8 * dur))
    record = {"short_item_id": items, "short_ts": ts, "short_play_time_ms": play, "short_duration_ms": dur,
              "short_like": like, "short_follow": follow,
              "pos_item_id": items[positive], "pos_ts": ts[positive], "pos_play_time_ms": play[positive],
              "pos_duration_ms": dur[positive], "long_item_id": items[:0], "long_ts": ts[:0]}
    return record, max(int(ts.max(initial=now)), now) + 1


def _history_row(events: list[Event], now_ms: int | None = None) -> pa.Table:
    """The same history as a samples.parquet-shaped arrow row (for onerec.samples.collate)."""
    record, ts = _history_record(events, now_ms)
    cols = {"user_id": pa.array([0], pa.int64()), "item_id": pa.array([0], pa.int64()), "ts": pa.array([ts], pa.int64())}
    return pa.table({**cols, **{name: pa.array([values], pa.list_(pa.int64())) for name, values in record.items()}})


def create_app(cfg: ServeConfig | None = None, bundle: model_registry.Bundle | None = None) -> FastAPI:
    """The app; `bundle` serves a local model (benchmarks, tests) instead of resolving the registry alias."""
    import asyncio
    import concurrent.futures
    import contextlib

    import torch

    from onerec.samples import collate, collate_record

    cfg = cfg or ServeConfig()
    if cfg.torch_threads < 1:
        raise ValueError(f"torch_threads must be >= 1, got {cfg.torch_threads}")
    if bundle is None and cfg.bundle:
        bundle = model_registry.read_bundle(cfg.bundle, version=f"local:{cfg.bundle}")
    served = Served(cfg, bundle)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        stop = threading.Event()

        def poll():
            while not stop.wait(cfg.poll_s):
                try:
                    served.reload_if_moved()
                except Exception:   # a registry hiccup must not kill serving: keep the current model
                    log.exception("alias reload failed; still serving %s", served.version)

        thread = threading.Thread(target=poll, daemon=True, name="alias-poll")
        if cfg.poll_s > 0 and bundle is None:
            thread.start()
        yield
        stop.set()

    app = FastAPI(title="OneRec recommendation service", lifespan=lifespan)
    app.state.served = served

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request, exc):
        # FastAPI's default echoes the offending input, which may not be JSON-encodable (Infinity, NaN) and then
        # turns a 422 into a 500: report where and what, one line, never the raw input.
        errors = [{"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", ""))} for e in exc.errors()]
        detail = "; ".join(f"{'.'.join(e['loc'])}: {e['msg']}" for e in errors[:10]) or "invalid request"
        return JSONResponse(status_code=422, content={"detail": detail, "errors": errors[:50]})

    @app.get("/healthz")
    def healthz():
        return {"status": "ok", "model_version": served.version}

    @app.get("/metadata")
    def metadata():
        b = served.bundle
        return {"model_name": cfg.model_name, "alias": cfg.alias, "model_version": served.version,
                "codebook_digest": b.codebook.get("digest"), "levels": len(b.model.cfg.codebook_sizes),
                "trie_depth": b.trie.depth, "catalog_items": int(len(b.trie.items)),
                "known_users": len(served.contexts.span), "model_config": asdict(b.model.cfg),
                "limits": {k: v for k, v in asdict(cfg).items() if k.startswith(("max_", "default_"))}}

    # Every request's torch work runs on this one thread. A sync endpoint would run on anyio's pool of worker
    # threads, and each thread that calls torch gets its own OpenMP team: on a 2-core box the teams fight for
    # the cores and a 12 ms request takes 25-30. One thread, one team of `torch_threads`; the event loop stays
    # free for /healthz and request parsing while a request computes.
    infer = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="onerec-infer",
                                                  initializer=torch.set_num_threads, initargs=(cfg.torch_threads,))

    def run_model(bundle, context, n: int, beam: int):
        """`context`: a samples row (arrow) or an explicit history's (record, ts) (numpy, see _history_record)."""
        with torch.inference_mode():
            cfg, sids = bundle.model.cfg, bundle.sids
            batch = collate(context, cfg, sids) if isinstance(context, pa.Table) else collate_record(*context, cfg, sids)
            return decoding.recommend(bundle.model, batch, bundle.trie, n, beam)[0]

    @app.post("/recommend", response_model=RecommendResponse)
    async def recommend(req: RecommendRequest):
        started = time.perf_counter()
        n, beam = req.n or cfg.default_n, req.beam_size or cfg.default_beam
        if n > cfg.max_n:
            raise HTTPException(422, f"n={n} exceeds the limit {cfg.max_n}")
        if beam > cfg.max_beam:
            raise HTTPException(422, f"beam_size={beam} exceeds the limit {cfg.max_beam}")
        if (req.user_id is None) == (req.history is None):
            raise HTTPException(422, "give exactly one of user_id or history")
        bundle = served.bundle        # one consistent model for the whole request, even during a swap
        if req.as_of_ms is not None and req.user_id is None:
            raise HTTPException(422, "as_of_ms applies to user_id requests only")
        if req.user_id is not None:
            row = served.contexts.row(req.user_id, req.as_of_ms)
            if row is None:
                when = "" if req.as_of_ms is None else f" at or before as_of_ms={req.as_of_ms}"
                raise HTTPException(404, f"unknown user_id {req.user_id}: no context for this user{when}; send a history")
            context = served.contexts.table.slice(row, 1)
        else:
            if len(req.history) > cfg.max_history:
                raise HTTPException(422, f"history has {len(req.history)} events; the limit is {cfg.max_history}")
            ids = np.array([e.item_id for e in req.history], dtype=np.int64)
            unknown = ids[bundle.sids.lookup(ids)[..., 0] < 0] if len(ids) else ids
            if len(unknown):
                raise HTTPException(422, f"unknown item_id(s) in history: {sorted(set(unknown.tolist()))[:10]}")
            context = _history_record(req.history)
        recs = await asyncio.get_running_loop().run_in_executor(infer, run_model, bundle, context, n, max(beam, n))
        return RecommendResponse(
            request_id=uuid.uuid4().hex, model_version=f"{cfg.model_name}/{bundle.version}",
            items=[Item(item_id=r.item_id, score=r.logp, gen_prob=r.gen_prob, sid=list(r.sid)) for r in recs],
            took_ms=round((time.perf_counter() - started) * 1000, 3))

    return app


def main(argv=None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m onerec.serving", description=__doc__.split("\n")[0])
    for f in fields(ServeConfig):
        typ = {"int": int, "float": float}.get(str(f.type), str)
        parser.add_argument("--" + f.name.replace("_", "-"), type=typ, default=f.default)
    cfg = ServeConfig(**vars(parser.parse_args(argv)))
    if cfg.torch_threads < 1:
        parser.error(f"--torch-threads must be >= 1, got {cfg.torch_threads}")
    logging.basicConfig(level=logging.INFO)
    uvicorn.run(create_app(cfg), host=cfg.host, port=cfg.port, log_level="info", access_log=False)


if __name__ == "__main__":
    main()
