"""The embedded synthetic world: deterministic, realistic in the ways the pipeline relies on."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from onerec.data.synthetic import load
from onerec.schemas import DAY_MS, conform, date_of, day_start_ms

W = dict(n_users=400, new_users_per_day=7, n_items=600, new_items_per_day=25, n_topics=8, n_authors=80)


def test_same_day_is_identical_whatever_was_generated_before():
    a = load(date="2026-01-04", **W)
    load(date="2026-01-02", seed=5, **W)   # other days and seeds in between change nothing
    b = load(date="2026-01-04", **W)
    for x, y in ((a.impressions, b.impressions), (a.items, b.items), (a.users, b.users)):
        pd.testing.assert_frame_equal(x, y)
    assert not load(date="2026-01-04", seed=1, **W).impressions.equals(a.impressions)


def test_conforms_and_stays_inside_its_day():
    ds = load(date="2026-01-03", **W)
    for name, df in (("impressions", ds.impressions), ("items", ds.items), ("users", ds.users)):
        conform(df, name)
    assert (date_of(ds.impressions["ts"]) == "2026-01-03").all()
    assert ds.impressions["ts"].is_monotonic_increasing
    assert not ds.impressions.duplicated(["user_id", "item_id", "ts", "request_id"]).any()
    assert set(ds.impressions["item_id"]) <= set(ds.items["item_id"])
    assert set(ds.impressions["user_id"]) <= set(ds.users["user_id"])


def test_new_items_and_users_arrive_every_day_and_get_shown():
    d2, d3 = load(date="2026-01-02", **W), load(date="2026-01-03", **W)
    assert len(d3.items) - len(d2.items) == W["new_items_per_day"]
    assert len(d3.users) - len(d2.users) == W["new_users_per_day"]
    new = set(d3.items["item_id"]) - set(d2.items["item_id"])
    assert (d3.items.loc[d3.items["item_id"].isin(new), "first_seen"] == day_start_ms("2026-01-03")).all()
    assert d3.impressions["item_id"].isin(new).sum() > 0           # cold-start items reach users


def test_durations_long_tailed_and_watch_time_depends_on_interest_and_duration():
    ds = load(date="2026-01-02", **W)
    dur = ds.items["duration_ms"].to_numpy()
    assert np.mean(dur) > 1.2 * np.median(dur)                      # long right tail (log-normal)
    assert dur.max() > 8 * np.median(dur)
    imp = ds.impressions
    frac = imp["play_time_ms"] / imp["duration_ms"]
    long_videos = imp["duration_ms"] > imp["duration_ms"].quantile(0.8)
    short_videos = imp["duration_ms"] < imp["duration_ms"].quantile(0.2)
    assert frac[long_videos].mean() < frac[short_videos].mean()     # long videos are finished less often
    # liked exposures were watched longer than the rest: play time carries interest
    assert frac[imp["like"] == 1].median() > 1.5 * frac[imp["like"] == 0].median()


def test_feedback_rates_are_plausible_for_short_video():
    imp = pd.concat([load(date=d, **W).impressions for d in ("2026-01-01", "2026-01-02", "2026-01-03")])
    rates = imp[["click", "like", "follow", "comment", "forward", "dislike"]].mean()
    assert 0.2 < rates["click"] < 0.8
    assert 0.005 < rates["like"] < 0.15
    assert 0 < rates["dislike"] < 0.02 and 0 < rates["follow"] < rates["like"]
    assert 0.01 < (imp["source"] == "random").mean() < 0.1
    counts = imp.groupby(imp["ts"] // DAY_MS).size()
    assert counts.max() / counts.min() < 1.3                        # stable daily volume: drift checks pass


def test_dates_before_the_world_are_bad_requests():
    from onerec.errors import BadInput

    with pytest.raises(BadInput, match="before the synthetic world's start_date"):
        load(date="2025-12-31", **W)


def test_world_simulator_draws_from_the_response_model_that_made_the_logs():
    """The simulator's responses to the logged impressions match the logs in distribution (same model, fresh
    draws); the true affinity orders items the way the responses do; ids that do not exist yet are refused."""
    from onerec.data.synthetic import WorldSimulator
    from onerec.errors import BadInput

    imps = load(date="2026-01-03", **W).impressions
    sim = WorldSimulator(**W)
    users, items, ts = (imps[c].to_numpy() for c in ("user_id", "item_id", "ts"))
    draws = [sim.respond(users, items, ts, seed=s) for s in range(5)]
    n = len(imps)
    for col in ("like", "click", "dislike"):
        p = imps[col].mean()
        sim_p = np.mean([d[col].mean() for d in draws])
        assert abs(sim_p - p) < 4 * np.sqrt(p * (1 - p) / n) + 1e-3, col
    play, sim_play = imps["play_time_ms"].to_numpy(np.float64), np.mean([d["play_time_ms"].mean() for d in draws])
    assert abs(sim_play - play.mean()) < 4 * play.std() / np.sqrt(n)
    assert (draws[0]["duration_ms"] == imps["duration_ms"].to_numpy()).all()
    again = sim.respond(users, items, ts, seed=0)
    assert all((again[k] == draws[0][k]).all() for k in again)              # a seed fixes the draw

    # pages of each user's truly best items get more stay time than random pages: the world rewards good models
    catalog = load(date="2026-01-03", **W).items["item_id"].to_numpy()
    some = np.unique(users)[:50]
    aff = np.stack([sim.affinity(np.full(len(catalog), u), catalog, np.full(len(catalog), ts.max())) for u in some])
    best = catalog[np.argsort(-aff, axis=1)[:, :6]].ravel()
    rand = np.random.default_rng(0).choice(catalog, size=best.shape)
    who, when = np.repeat(some, 6), np.full(len(best), ts.max())
    stay_best = np.mean([sim.respond(who, best, when, seed=s)["play_time_ms"].sum() for s in range(3)])
    stay_rand = np.mean([sim.respond(who, rand, when, seed=s)["play_time_ms"].sum() for s in range(3)])
    assert stay_best > 1.5 * stay_rand

    with pytest.raises(BadInput, match="does not exist"):
        sim.respond([0], [catalog.max() + 1], [ts.max()], seed=0)     # an item that arrives later
    # ...and `exists` says so without raising: a replay against a newer model filters such items out
    assert sim.exists([0, catalog.max(), catalog.max() + 1], [ts.max()]).tolist() == [True, True, False]
    later = load(date="2026-01-04", **W).items["item_id"].to_numpy().max()
    assert later > catalog.max() and sim.exists([later], [ts.max() + DAY_MS]).tolist() == [True]
    with pytest.raises(BadInput, match="before the world's start_date"):
        sim.respond([0], [0], [day_start_ms("2025-12-01")], seed=0)
