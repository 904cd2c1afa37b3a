"""Seeded, deterministic synthetic short-video world: the embedded default for `make demo` and tests.

The world is a latent-factor model (what the recommender has to discover):
- topics with centroids in R^dim; items sit near their topic's centroid, have an author, a latent
  quality and a long-tailed (log-normal) duration; new items and users arrive every day;
- users hold a sparse mixture of topics (Dirichlet) and an activity level;
- the logging policy ("legacy") shows pages of items chosen from random candidate pools by a noisy
  affinity score, with a small share of uniformly random exposures ("random", for unbiased eval);
- responses depend on affinity a = 4<u, v> + quality: the watched fraction falls with log duration
  (long videos are rarely finished) and rises with a; click/like/comment/follow/forward are
  Bernoulli in a, dislike in -a.
Every day is generated from rng([seed, stream, day]) so any date can be produced alone, in any order,
with the same result.
"""
from __future__ import annotations

import functools
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from onerec.data import Dataset
from onerec.errors import BadInput
from onerec.schemas import DAY_MS, date_of, day_start_ms

TOPICS = ["cooking", "travel", "pets", "gaming", "music", "dance", "fitness", "comedy", "beauty", "fashion",
          "tech", "cars", "football", "basketball", "news", "education", "diy", "gardening", "art", "movies",
          "anime", "parenting", "finance", "fishing"]
STYLES = ["quick", "funny", "relaxing", "epic", "daily", "beginner", "pro", "behind the scenes", "live", "top 10"]
NOUNS = ["tips", "vlog", "challenge", "tutorial", "highlights", "review", "story", "moments", "compilation", "guide"]


@dataclass(frozen=True)
class World:
    seed: int = 0
    start_date: str = "2026-01-01"   # day 0: the initial catalog and users exist from here
    n_users: int = 2000              # users on day 0
    new_users_per_day: int = 20
    n_items: int = 3000              # catalog on day 0
    new_items_per_day: int = 100
    n_topics: int = 24
    n_authors: int = 400
    dim: int = 16                    # latent dimension of interests
    page_size: int = 6               # items per request
    requests_per_day: float = 2.0    # mean requests of an active user
    candidates: int = 200            # legacy policy scores this many random candidates per request
    random_share: float = 0.05       # share of exposures chosen uniformly at random
    median_duration_s: float = 25.0


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


@functools.lru_cache(maxsize=8)
def _topics(w: World):
    rng = np.random.default_rng([w.seed, 0])
    centroids = _unit(rng.normal(size=(w.n_topics, w.dim)))
    popularity = 1.0 / np.arange(1, w.n_topics + 1) ** 0.8    # Zipf-like topic popularity
    popularity = rng.permutation(popularity / popularity.sum())
    author_topic = rng.choice(w.n_topics, size=w.n_authors, p=popularity)
    return centroids, popularity, author_topic


def _day_index(w: World, date: str) -> int:
    k = (day_start_ms(date) - day_start_ms(w.start_date)) // DAY_MS
    if k < 0:
        raise BadInput(f"date {date} is before the synthetic world's start_date {w.start_date}")
    return int(k)


@functools.lru_cache(maxsize=512)
def _items_of_day(w: World, k: int) -> pd.DataFrame:
    centroids, popularity, author_topic = _topics(w)
    rng = np.random.default_rng([w.seed, 1, k])
    n = w.n_items if k == 0 else w.new_items_per_day
    first_id = 0 if k == 0 else w.n_items + (k - 1) * w.new_items_per_day
    author = rng.integers(0, w.n_authors, size=n)
    topic = np.where(rng.random(n) < 0.8, author_topic[author], rng.choice(w.n_topics, size=n, p=popularity))
    vec = _unit(centroids[topic] + 0.45 * rng.normal(size=(n, w.dim)))
    duration = np.clip(rng.lognormal(np.log(w.median_duration_s), 0.9, size=n), 3, 900) * 1000
    style, noun = rng.integers(0, len(STYLES), n), rng.integers(0, len(NOUNS), n)
    start = day_start_ms(w.start_date)
    first_seen = start - rng.integers(0, 90, size=n) * DAY_MS if k == 0 else np.full(n, start + k * DAY_MS)
    return pd.DataFrame({
        "item_id": np.arange(first_id, first_id + n, dtype=np.int64),
        "first_seen": first_seen.astype(np.int64),
        "duration_ms": duration.astype(np.int64),
        "author_id": author.astype(np.int64),
        "tags": [[TOPICS[t % len(TOPICS)], NOUNS[m]] for t, m in zip(topic, noun)],
        "text": [f"{STYLES[s]} {TOPICS[t % len(TOPICS)]} {NOUNS[m]} by creator {a}"
                 for s, t, m, a in zip(style, topic, noun, author)],
        "image_vector": [None] * n,
        "topic": topic.astype(np.int64),             # ground truth category, for SID purity checks
        "_vec": list(vec.astype(np.float32)),        # latent: used by the simulator, never exported
        "_quality": rng.normal(0, 0.5, size=n),
    })


@functools.lru_cache(maxsize=512)
def _users_of_day(w: World, k: int) -> pd.DataFrame:
    centroids, popularity, _ = _topics(w)
    rng = np.random.default_rng([w.seed, 3, k])
    n = w.n_users if k == 0 else w.new_users_per_day
    first_id = 0 if k == 0 else w.n_users + (k - 1) * w.new_users_per_day
    mix = rng.dirichlet(np.full(w.n_topics, 0.15), size=n) * 0.5 + popularity * 0.0
    vec = _unit(mix @ centroids + 0.25 * rng.normal(size=(n, w.dim)))
    start = day_start_ms(w.start_date)
    return pd.DataFrame({
        "user_id": np.arange(first_id, first_id + n, dtype=np.int64),
        "first_seen": np.full(n, start + k * DAY_MS, dtype=np.int64) if k else start - rng.integers(0, 365, n) * DAY_MS,
        "age_group": rng.integers(0, 7, size=n).astype(np.int64),
        "gender": rng.choice(["f", "m", "u"], size=n, p=[0.48, 0.48, 0.04]),
        "_vec": list(vec.astype(np.float32)),
        "_active": np.clip(rng.beta(2, 3, size=n) * 1.2, 0.05, 0.95),
    })


def _until(fn, w: World, k: int) -> pd.DataFrame:
    return pd.concat([fn(w, j) for j in range(k + 1)], ignore_index=True)


# ---------------------------------------------------------------------------------------------------------
# the true response model: the logging below and WorldSimulator both draw from these, so a served page gets the
# responses the world would have given

def _affinity(u_vec: np.ndarray, i_vec: np.ndarray, quality: np.ndarray) -> np.ndarray:
    return 4.0 * np.einsum("nd,nd->n", u_vec, i_vec) + quality - 0.5


def _watch(w: World, rng, a: np.ndarray, dur: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(play time ms, long view): the watched fraction falls with log duration and rises with affinity."""
    n = len(a)
    frac = _sigmoid(a - 0.6 * np.log(dur / (w.median_duration_s * 1000)) + rng.normal(0, 0.7, size=n))
    frac = frac * (1 + 0.6 * (rng.random(n) < _sigmoid(a - 3)))    # replays of loved videos
    skipped = rng.random(n) < _sigmoid(-a - 1.0)
    play = np.where(skipped, np.minimum(dur, rng.integers(300, 3000, size=n)), dur * frac).astype(np.int64)
    return play, frac > 0.8


def _flags(rng, a: np.ndarray, long_view: np.ndarray) -> dict:
    def bern(logit):
        return (rng.random(len(a)) < _sigmoid(logit)).astype(np.int8)

    return {"click": bern(a - 0.3), "like": bern(a - 4.5 + 1.5 * long_view), "follow": bern(a - 6.5),
            "comment": bern(a - 5.5), "forward": bern(a - 6.0), "dislike": bern(-a - 5.0)}


def _impressions(w: World, k: int, items: pd.DataFrame, users: pd.DataFrame) -> pd.DataFrame:
    rng = np.random.default_rng([w.seed, 2, k])
    day0 = day_start_ms(w.start_date) + k * DAY_MS
    active = users.index[rng.random(len(users)) < users["_active"].to_numpy()]
    n_req = 1 + rng.poisson(w.requests_per_day - 1, size=len(active))
    req_user = np.repeat(active.to_numpy(), n_req)
    R, P = len(req_user), w.page_size
    U = np.stack(users["_vec"].to_numpy())[req_user]                 # (R, dim)
    V = np.stack(items["_vec"].to_numpy())
    quality = items["_quality"].to_numpy()
    fresh = (items["first_seen"].to_numpy() >= day0 - 2 * DAY_MS) * 0.5  # the legacy policy boosts new items

    cand = rng.integers(0, len(items), size=(R, w.candidates))
    score = 3.0 * np.einsum("rd,rcd->rc", U, V[cand]) + quality[cand] + fresh[cand] + rng.gumbel(size=cand.shape)
    page = np.take_along_axis(cand, np.argsort(-score, axis=1)[:, :P], axis=1)   # (R, P)
    is_random = rng.random((R, P)) < w.random_share
    page = np.where(is_random, rng.integers(0, len(items), size=(R, P)), page)

    it = page.ravel()
    u_idx = np.repeat(req_user, P)
    a = _affinity(np.repeat(U, P, axis=0), V[it], quality[it])
    dur = items["duration_ms"].to_numpy()[it]
    play, long_view = _watch(w, rng, a, dur)
    req_ts = day0 + np.sort(rng.integers(0, DAY_MS - 3_600_000, size=R))  # requests spread over the day
    offset = np.cumsum(np.concatenate([np.zeros((R, 1)), play.reshape(R, P)[:, :-1] + 500], axis=1), axis=1)
    ts = np.minimum(np.repeat(req_ts, P) + offset.ravel().astype(np.int64), day0 + DAY_MS - 1)
    flags = _flags(rng, a, long_view)
    df = pd.DataFrame({
        "user_id": users["user_id"].to_numpy()[u_idx],
        "item_id": items["item_id"].to_numpy()[it],
        "ts": ts.astype(np.int64),
        "request_id": [f"{k}-{r}" for r in np.repeat(np.arange(R), P)],
        "play_time_ms": play,
        "duration_ms": dur.astype(np.int64),
        **flags,
        "source": np.where(is_random.ravel(), "random", "legacy"),
        "gen_prob": np.full(len(it), np.nan),
    })
    return df.sort_values(["ts", "user_id", "item_id"], kind="stable").reset_index(drop=True)


def load(path=None, *, date: str | None = None, **options) -> Dataset:
    """Day `date` of the world (impressions of that day; the catalog and users as of that day)."""
    if date is None:
        raise BadInput("the synthetic source is generated day by day: give a date")
    fields = set(World.__dataclass_fields__)
    unknown = set(options) - fields
    if unknown:
        raise BadInput(f"unknown synthetic option(s) {sorted(unknown)}; known: {sorted(fields)}")
    w = World(**options)
    k = _day_index(w, date)
    items, users = _until(_items_of_day, w, k), _until(_users_of_day, w, k)
    imps = _impressions(w, k, items, users)
    assert (date_of(imps["ts"]) == date).all()
    public = lambda df: df[[c for c in df.columns if not c.startswith("_")]].reset_index(drop=True)  # noqa: E731
    return Dataset(imps, public(items), public(users),
                   info={"source": "synthetic", "world": asdict(w), "day_index": k, "sliced": True})


class WorldSimulator:
    """The synthetic source's ground truth as a simulator: `respond(users, items, ts)` draws play time and the
    interaction flags from the very response model that generated the logs (`_affinity`, `_watch`, `_flags`), so a
    page served by any model is scored by the world, not by a model of it. Ids must exist at the given time (an
    item or user that arrives later is an error, as it would be in a real log)."""

    def __init__(self, **options):
        fields = set(World.__dataclass_fields__)
        unknown = set(options) - fields
        if unknown:
            raise BadInput(f"unknown synthetic option(s) {sorted(unknown)}; known: {sorted(fields)}")
        self.world = World(**options)

    def _day(self, ts_ms) -> int:
        """The world's day index of the newest timestamp (the catalog and users as of then)."""
        ts = np.asarray(ts_ms, np.int64)
        newest = int(ts.max()) if len(ts) else day_start_ms(self.world.start_date)
        k = (newest - day_start_ms(self.world.start_date)) // DAY_MS
        if k < 0:
            raise BadInput(f"world simulator: time {newest} ms is before the world's start_date {self.world.start_date}")
        return int(k)

    @functools.lru_cache(maxsize=4)
    def _latent(self, k: int):
        items, users = _until(_items_of_day, self.world, k), _until(_users_of_day, self.world, k)
        return (np.stack(items["_vec"].to_numpy()), items["_quality"].to_numpy(), items["duration_ms"].to_numpy(),
                np.stack(users["_vec"].to_numpy()))

    def affinity(self, user_ids, item_ids, ts_ms) -> np.ndarray:
        """The true affinity a = 4<u, v> + quality - 0.5 of each (user, item) at time ts (ids are row numbers of the
        world's tables: both are numbered from 0 in arrival order)."""
        users, items = np.asarray(user_ids, np.int64), np.asarray(item_ids, np.int64)
        k = self._day(ts_ms)
        V, quality, _, U = self._latent(k)
        if len(users) and (users.min() < 0 or users.max() >= len(U) or items.min() < 0 or items.max() >= len(V)):
            raise BadInput(f"world simulator: a user or item id does not exist by day {k} of the world")
        return _affinity(U[users], V[items], quality[items])

    def exists(self, item_ids, ts_ms) -> np.ndarray:
        """True where the item has arrived in the world by time ts (a replay of an earlier day against a newer model
        can be served items the world did not have yet: they cannot be exposed then)."""
        items = np.asarray(item_ids, np.int64)
        n_items = len(self._latent(self._day(ts_ms))[1])
        return (items >= 0) & (items < n_items)

    def respond(self, user_ids, item_ids, ts_ms, seed) -> dict[str, np.ndarray]:
        """One draw of the world's response to each (user, item) impression at ts: play_time_ms, duration_ms,
        click, like, follow, comment, forward, dislike. `seed` (int or sequence) fixes the draw."""
        rng = np.random.default_rng(seed)
        items = np.asarray(item_ids, np.int64)
        a = self.affinity(user_ids, items, ts_ms)
        dur = self._latent(self._day(ts_ms))[2][items].astype(np.float64)
        play, long_view = _watch(self.world, rng, a, dur)
        return {"play_time_ms": play, "duration_ms": dur.astype(np.int64), **_flags(rng, a, long_view)}
