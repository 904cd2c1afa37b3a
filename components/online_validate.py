"""`online_validate`: champion/challenger A/B replay of day D's requests over HTTP, and the blessing.

The challenger is the model evaluate(D) scored (the newest post-trained model before D), served exactly as promote
would register it: its stage directory + its own date's tokenizer tables (model_registry.write_bundle). The champion
is the registry alias, pinned for the whole replay (the service does not poll). Both run as real services
(onerec.online.Service: 127.0.0.1, free ports, always stopped, also when this stage fails or is killed).

Traffic: day D's logged requests (impressions not produced by an earlier replay), at most `max_requests` of them
(a stable hashed subset), in time order; a salted hash of the user id sends `challenger_share` of the users to the
challenger and the rest to the champion. Each request is `{"user_id", "as_of_ms": the request's time}`, so the
service reads the context built strictly before the request (features(D) samples), leak-free.

Per arm: client-side latency p50/p99, error rate, invalid rate (a served item whose SID is not the arm's own),
and per request, over the exposed page (the top `slate` items), the users' responses from a simulator. With
`data.source: synthetic` that is the world itself (onerec.data.synthetic.WorldSimulator: the true response model
that generated the logs; stay time = the sum of drawn play times). For logged real data there is no ground truth
and the reward model(D) stands in
(stay-time proxy = sum of predicted play time, where the predicted watch-time percentile q is mapped to play time
through the day's play-time quantiles in the item's duration bucket; expected likes, follows, comments, forwards,
dislikes), plus the logged-replay estimate (logged items of the request that the arm also served, and their
logged play time). Means with confidence intervals; challenger - champion with Welch intervals.

Outputs: blessing.json (blessed, reasons, both arms, differences: promote's online gates read it), ab.md,
ab.png, and served_impressions.parquet: the challenger arm's pages as impressions with source = model and
gen_prob, logged feedback where the user had that item in the logged request and simulated feedback otherwise.
The replay runs after D has closed, i.e. during D+1, so the served impressions are stamped one day after the
replayed request (same time of day + the page position in ms); ingest(D+1) adds them to D+1's impressions
(`data.served_feedback`), which is how the next day's RL gets pi_old (OneRec-V2's self-improvement loop).
"""
from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

from components.common import champion as _champion
from onerec.errors import BadInput


def external_inputs(ctx) -> dict:
    champion = _champion(ctx)
    return {} if champion is None else {"champion": f"{champion.name}/{champion.version}"}


def _disabled(ctx) -> dict:
    blessing = {"blessed": True, "skipped": True, "reasons": ["online validation disabled (online_validate.enabled)"]}
    ctx.out.write_json("blessing.json", blessing)
    return {"blessed": True, "skipped": 1}


def run(ctx) -> dict:
    import mlflow
    import numpy as np

    from components.contract import fault
    from components.common import OnlineValidateConfig, candidate_dirs, checked_section, read_evaluation, registry
    from onerec import model_registry, online

    s = checked_section(ctx, OnlineValidateConfig)
    if not s.get("enabled", True):
        return _disabled(ctx)
    evaluation = read_evaluation(ctx, "online_validate")
    model_dir, tokenize_dir = candidate_dirs(ctx, evaluation["evaluated_model"], "online_validate")
    champion = _champion(ctx)
    impressions = ctx.upstream("ingest").read_table("impressions")
    salt = str(s.get("salt", "onerec-ab"))
    reqs = online.requests_of_day(impressions, int(s.get("max_requests", 500)), salt)
    if not len(reqs.ts):
        raise BadInput(f"online_validate {ctx.date}: the day has no logged request to replay")
    arm_of = np.where(online.split(reqs.user_id, salt, float(s.get("challenger_share", 0.5))), "challenger", "champion")
    n, slate, beam = int(s.get("n", 10)), int(s.get("slate", 6)), int(s.get("beam_size", 64))
    if not 1 <= slate <= n:
        raise BadInput(f"online_validate: need 1 <= slate ({slate}) <= n ({n})")
    uri = ctx.config["mlflow"]["tracking_uri"]
    challenger = f"{evaluation['evaluated_model']}"
    mlflow.set_tags({"onerec.ab_challenger": challenger,
                     "onerec.ab_champion": "none" if champion is None else f"{champion.name}/{champion.version}"})

    with tempfile.TemporaryDirectory(prefix="onerec-online-") as tmp:
        tmp = Path(tmp)
        import pyarrow.parquet as pq

        samples = ctx.upstream("features").read_table("samples")
        pq.write_table(samples, tmp / "contexts.parquet")
        model_registry.write_bundle(tmp / "challenger", model_dir, tokenize_dir)
        common = ["--contexts", str(tmp / "contexts.parquet"), "--poll-s", "0", "--max-beam", str(max(beam, n))]
        services = {"challenger": online.Service(["--bundle", str(tmp / "challenger"), *common], "challenger",
                                                 float(s.get("start_timeout_s", 120)))}
        if champion is not None:
            services["champion"] = online.Service(["--model-name", champion.name, "--alias", registry(ctx).champion_alias,
                                                   "--tracking-uri", uri, *common], "champion",
                                                  float(s.get("start_timeout_s", 120)))
        with contextlib.ExitStack() as stack:
            for svc in services.values():       # every service stops on the way out, whatever happens in here
                stack.callback(svc.stop)
                svc.start()
            urls = {arm: svc.wait() for arm, svc in services.items()}
            if champion is not None:   # pinned: the service must serve the version this replay is about
                import httpx

                seen = httpx.get(urls["champion"] + "/metadata", timeout=10).json()["model_version"]
                if seen != f"{champion.name}/{champion.version}":
                    raise RuntimeError(f"the champion moved during online validation ({seen} is served, "
                                       f"{champion.name}/{champion.version} was resolved); retry")
            fault("online_validate", "replay")
            served = online.replay(reqs, arm_of, urls, n=n, beam_size=beam, timeout_s=float(s.get("timeout_s", 30)),
                                   warmup=int(s.get("warmup", 3)))
        champion_sids = None if champion is None else model_registry.load_version(champion, tracking_uri=uri).sids

    from onerec.samples import SidTable

    tables = {"challenger": SidTable.from_table(tokenize_dir.read_table("sids")), "champion": champion_sids}
    world = world_simulator(ctx)
    # replaying an earlier day against a newer champion: the world cannot expose an item it did not have yet
    exists = None if world is None else (lambda items, i: world.exists(items, reqs.ts[i:i + 1]))
    pages = _pages(served, tables, slate, exists)
    play_map = _play_time_map(ctx, impressions)
    if world is not None:
        scores, pairs = _simulate_world(ctx, world, reqs, pages)
    else:
        scores, pairs = _simulate(ctx, reqs, pages, samples, play_map)
    simulator = "reward_model" if world is None else "world"
    mlflow.set_tag("onerec.ab_simulator", simulator)
    arms, per_request = {}, {}
    confidence = float(s.get("confidence", 0.95))
    for arm in services:
        mine = [i for i, sv in enumerate(served) if sv.arm == arm]
        ok = [i for i in mine if served[i].status == 200]
        per_request[arm] = {k: np.array([v[i] for i in ok]) for k, v in scores.items()}
        invalid = np.concatenate([pages[i]["invalid"] for i in mine]) if mine else np.zeros(0, bool)
        arms[arm] = online.arm_summary([served[i] for i in mine], per_request[arm], invalid, confidence)
    diffs = {} if champion is None else {k: online.diff_ci(per_request["challenger"][k], per_request["champion"][k],
                                                           confidence) for k in scores}
    blessed, reasons = online.bless(arms, diffs, s)
    blessing = {"blessed": bool(blessed), "reasons": reasons, "date": ctx.date, "challenger_model": challenger,
                "champion_version": None if champion is None else f"{champion.name}/{champion.version}",
                "requests": int(len(reqs.ts)), "confidence": confidence, "simulator": simulator,
                "split": {"salt": salt, "challenger_share": float(s.get("challenger_share", 0.5))},
                "n": n, "slate": slate, "beam_size": beam, "arms": arms, "differences": diffs}
    ctx.out.write_json("blessing.json", blessing)
    markdown = ab_markdown(blessing)
    ctx.out.write_bytes("ab.md", markdown.encode())
    written = 0
    if s.get("write_back", True):
        table = _served_impressions(ctx, reqs, served, pages, pairs, play_map)
        uri_written = ctx.out.write_table("served_impressions", table)
        written = table.num_rows
        mlflow.log_input(mlflow.data.from_pandas(table.to_pandas(), source=uri_written,
                                                 name=f"served_impressions/{ctx.date}"), context="online_validate")
    fig = ab_figure(blessing, {arm: [sv.latency_ms for sv in served if sv.arm == arm and sv.status == 200]
                               for arm in arms})
    ctx.save_figure("ab.png", fig)
    mlflow.log_dict(blessing, "online_validate/blessing.json")
    mlflow.log_text(markdown, "online_validate/ab.md")
    mlflow.set_tag("onerec.blessed", str(bool(blessed)).lower())
    out = {"blessed": bool(blessed), "requests": int(len(reqs.ts)), "served_impressions": written}
    for arm, a in arms.items():
        out.update({f"{arm}_{k}": a[k] for k in ("served", "error_rate", "invalid_rate", "latency_p50_ms",
                                                   "latency_p99_ms") if a[k] is not None})
        out.update({f"{arm}_{k}": v["mean"] for k, v in a["metrics"].items() if np.isfinite(v["mean"])})
    out.update({f"diff_{k}": d["diff"] for k, d in diffs.items() if np.isfinite(d["diff"])})
    return out


def _pages(served, tables, slate: int, exists=None) -> list[dict]:
    """Per served request: the exposed page (top `slate` valid items) and which returned items were invalid
    (unknown to the arm's own SID table, returned with another SID than the table's, or, with `exists(items,
    index)`, not yet in the catalog at the request's time)."""
    import numpy as np

    pages = []
    for sv in served:
        items = np.array([it["item_id"] for it in sv.items], np.int64)
        invalid = np.zeros(len(items), bool)
        table = tables.get(sv.arm)
        if len(items) and table is not None:
            known = table.lookup(items)
            for j, it in enumerate(sv.items):
                sid = list(it.get("sid") or [])
                invalid[j] = known[j, 0] < 0 or known[j, :len(sid)].tolist() != sid
        if len(items) and exists is not None:
            invalid |= ~exists(items, sv.index)
        keep = np.nonzero(~invalid)[0][:slate]
        pages.append({"request": sv.index, "items": items[keep], "invalid": invalid,
                      "gen_prob": np.array([sv.items[j]["gen_prob"] for j in keep], np.float64)})
    return pages


def _play_time_map(ctx, impressions):
    from onerec import online

    reward = (ctx.config.get("features") or {}).get("reward") or {}
    return online.PlayTimeMap(impressions["play_time_ms"].to_numpy(), impressions["duration_ms"].to_numpy(),
                              beta=float(reward.get("beta", 2.0)), eps=float(reward.get("eps", 1e-6)),
                              unit_ms=float(reward.get("unit_ms", 1000)))


def world_simulator(ctx):
    """The ground truth when there is one: the synthetic source's own response model (onerec.data.synthetic);
    None for logged real data, where the reward model(D) stands in for the users (`online_validate.simulator`:
    auto = the world when there is one, or reward_model / world explicitly)."""
    data, choice = ctx.config.get("data") or {}, ctx.section.get("simulator", "auto")
    if choice not in ("auto", "world", "reward_model"):
        raise BadInput(f"online_validate.simulator must be auto, world or reward_model, got {choice!r}")
    if choice == "world" and data.get("source") != "synthetic":
        raise BadInput("online_validate.simulator=world needs data.source=synthetic (no ground truth for logged data)")
    if choice == "reward_model" or data.get("source") != "synthetic":
        return None
    from onerec.data.synthetic import WorldSimulator

    return WorldSimulator(**(data.get("options") or {}))


def _page_pairs(pages):
    import numpy as np

    page_of = np.repeat(np.arange(len(pages)), [len(p["items"]) for p in pages]).astype(np.int64)
    item = np.concatenate([p["items"] for p in pages] + [np.zeros(0, np.int64)])
    return page_of, item


def _logged_replay(per, reqs, pages):
    for k, p in enumerate(pages):
        logged = reqs.logged[p["request"]]
        hit = [int(i) for i in p["items"] if int(i) in logged]
        per["logged_hits"][k] = len(hit)
        per["logged_play_s"][k] = sum(float(logged[i]["play_time_ms"]) for i in hit) / 1000.0


def _simulate_world(ctx, world, reqs, pages) -> tuple[dict, dict]:
    """Like `_simulate`, with the world's own responses (one seeded draw per served (request, item) at the request's
    time) instead of reward-model predictions: the true stay time and interactions of each page."""
    import numpy as np

    from onerec.reward_model import TASKS
    from onerec.schemas import DAY_MS, day_start_ms

    page_of, item = _page_pairs(pages)
    request = np.array([p["request"] for p in pages], np.int64)[page_of] if len(page_of) else page_of
    seed = [int(ctx.section.get("seed", 0)), day_start_ms(ctx.date) // DAY_MS, 1]
    resp = world.respond(reqs.user_id[request], item, reqs.ts[request], seed=seed)
    per = {k: np.zeros(len(pages)) for k in ("stay_time_s", *TASKS[1:], "logged_hits", "logged_play_s")}
    np.add.at(per["stay_time_s"], page_of, resp["play_time_ms"] / 1000.0)
    for name in TASKS[1:]:
        np.add.at(per[name], page_of, resp[name].astype(np.float64))
    _logged_replay(per, reqs, pages)
    return per, {"page": page_of, "item": item, "duration": resp["duration_ms"].astype(np.float64), "world": resp}


def _simulate(ctx, reqs, pages, samples, play_map) -> tuple[dict, dict]:
    """(per served request: reward-model predictions summed over its page and the logged-replay estimates,
    per (request, item) pair: the predictions behind them)."""
    import numpy as np
    import pyarrow as pa
    import torch

    from components.common import load_reward_model as load_rm
    from onerec.reward_model import TASKS, rm_batch
    from onerec.samples import SidTable
    from onerec.serving import Contexts

    rm, _ = load_rm(ctx.upstream("reward_model"))
    sids = SidTable.from_table(ctx.upstream("tokenize").read_table("sids"))
    items = ctx.upstream("ingest").read_table("items")
    dur_of = dict(zip(items["item_id"].to_numpy().tolist(), items["duration_ms"].to_numpy().tolist()))
    page_of, item = _page_pairs(pages)
    contexts = Contexts(samples)     # the service's own lookup: the context as of each request's time
    rows = contexts.rows(reqs.user_id, reqs.ts)[np.array([p["request"] for p in pages], np.int64)][page_of] \
        if len(page_of) else page_of
    probs = np.full((len(item), len(TASKS)), np.nan)
    rm.eval()
    with torch.no_grad():
        for a in range(0, len(item), 512):
            sel = np.arange(a, min(a + 512, len(item)))
            sel = sel[rows[sel] >= 0]
            if len(sel):
                b = rm_batch(contexts.table.take(pa.array(rows[sel])), rm.context_cfg, sids, items=item[sel],
                             with_labels=False)
                probs[sel] = torch.sigmoid(rm(b)).float().numpy()
    probs = np.nan_to_num(probs, nan=0.0)
    duration = np.array([dur_of.get(int(i), 0) for i in item], np.float64)
    play = play_map(probs[:, 0], duration)
    per = {k: np.zeros(len(pages)) for k in ("stay_time_s", *TASKS[1:], "logged_hits", "logged_play_s")}
    np.add.at(per["stay_time_s"], page_of, play / 1000.0)
    for t, name in enumerate(TASKS[1:], start=1):
        np.add.at(per[name], page_of, probs[:, t])
    _logged_replay(per, reqs, pages)
    return per, {"page": page_of, "item": item, "probs": probs, "duration": duration}


def _served_impressions(ctx, reqs, served, pages, pairs, play_map):
    """The challenger arm's pages as impressions of D+1 (see the module docstring), in the data contract."""
    import numpy as np
    import pandas as pd

    from onerec import online
    from onerec.reward_model import TASKS
    from onerec.schemas import DAY_MS, conform, day_start_ms

    s = ctx.section
    rng = np.random.default_rng([int(s.get("seed", 0)), day_start_ms(ctx.date) // DAY_MS])
    end = day_start_ms(ctx.date) + 2 * DAY_MS - 1
    kappa = float(s.get("simulator_concentration", 4.0))
    rows = []
    for k, (sv, p) in enumerate(zip(served, pages)):
        if sv.arm != "challenger" or sv.status != 200:
            continue
        mine = np.nonzero(pairs["page"] == k)[0]
        logged = reqs.logged[p["request"]]
        r = p["request"]
        for pos, (j, gen) in enumerate(zip(mine, p["gen_prob"])):
            item, dur = int(pairs["item"][j]), float(pairs["duration"][j])
            if item in logged:            # the user saw this very item in the logged request: their real response
                fb = {f: int(logged[item][f]) for f in online.FEEDBACK}
            elif "world" in pairs:        # the ground truth's own response to this page
                fb = {f: int(pairs["world"][f][j]) for f in online.FEEDBACK}
            else:
                pr = pairs["probs"][j]    # the reward model: q ~ Beta around the predicted percentile, flags ~ Bernoulli
                qhat = float(np.clip(pr[0], 1e-3, 1 - 1e-3))
                q = rng.beta(kappa * qhat, kappa * (1 - qhat))
                play = int(play_map(np.array([q]), np.array([dur]))[0])
                fb = {"play_time_ms": play, "duration_ms": int(dur), "click": int(play >= min(3000.0, dur))}
                fb.update({t: int(rng.random() < pr[i]) for i, t in enumerate(TASKS) if i})
            rows.append({"user_id": int(reqs.user_id[r]), "item_id": item,
                         "ts": min(int(reqs.ts[r]) + DAY_MS + pos, end),
                         "request_id": f"ab-{sv.served_request_id}", **fb,
                         "source": "model", "gen_prob": float(gen)})
    cols = ["user_id", "item_id", "ts", "request_id", *online.FEEDBACK, "source", "gen_prob"]
    return conform(pd.DataFrame(rows, columns=cols), "impressions")


def ab_markdown(blessing: dict) -> str:
    """The A/B table: each metric per arm with its interval, and challenger - champion."""
    arms, diffs = blessing["arms"], blessing.get("differences") or {}
    pct = round(100 * blessing.get("confidence", 0.95))

    def ci(m):
        return "-" if m is None else f"{m['mean']:.4f} [{m['lo']:.4f}, {m['hi']:.4f}]"

    lines = [f"# Online validation {blessing['date']}: {'blessed' if blessing['blessed'] else 'NOT blessed'}", "",
             f"challenger `{blessing['challenger_model']}` vs champion `{blessing['champion_version'] or 'none'}`; "
             f"{blessing['requests']} replayed requests, page of {blessing['slate']}, beam {blessing['beam_size']}, "
             f"{pct}% intervals", "",
             "Simulator: " + ("**world**: the synthetic source's true response model drew every served item's play time "
                              "and interactions" if blessing.get("simulator") == "world" else
                              "**reward model**: reward_model(D)'s predictions (no ground truth for logged data)"), "",
             "| | challenger | champion |", "|---|---|---|"]
    ch, cp = arms["challenger"], arms.get("champion") or {}
    for k in ("requests", "served", "error_rate", "invalid_rate", "latency_p50_ms", "latency_p99_ms"):
        fmt = lambda v: "-" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))  # noqa: E731
        lines.append(f"| {k} | {fmt(ch.get(k))} | {fmt(cp.get(k))} |")
    lines += ["", "| metric (per request) | challenger | champion | challenger - champion |", "|---|---|---|---|"]
    for k, m in ch["metrics"].items():
        d = diffs.get(k)
        dtxt = "-" if not d or d["diff"] != d["diff"] else f"{d['diff']:+.4f} [{d['lo']:+.4f}, {d['hi']:+.4f}]"
        lines.append(f"| {k} | {ci(m)} | {ci((cp.get('metrics') or {}).get(k))} | {dtxt} |")
    lines += ["", "## Blessing", ""] + [f"- {r}" for r in blessing["reasons"]]
    return "\n".join(lines) + "\n"


def ab_figure(blessing: dict, latencies: dict):
    """Left: each guarded metric per arm with its interval. Right: the latency distribution per arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    arms = blessing["arms"]
    metrics = list(arms["challenger"]["metrics"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 0.45 * len(metrics) + 2.5))
    for j, (arm, color) in enumerate((("challenger", "tab:blue"), ("champion", "tab:orange"))):
        if arm not in arms:
            continue
        m = arms[arm]["metrics"]
        y = np.arange(len(metrics)) + (0.15 if j else -0.15)
        mean = np.array([m[k]["mean"] for k in metrics])
        scale = np.array([max(abs(arms["challenger"]["metrics"][k]["mean"]), 1e-9) for k in metrics])
        lo, hi = np.array([m[k]["lo"] for k in metrics]), np.array([m[k]["hi"] for k in metrics])
        err = np.nan_to_num(np.vstack([mean - lo, hi - mean]) / scale, posinf=0.0)
        left.errorbar(mean / scale, y, xerr=err, fmt="o", color=color, label=arm, capsize=3)
    left.set_yticks(np.arange(len(metrics)), metrics)
    left.set_xlabel("mean per request, relative to the challenger's")
    left.axvline(1.0, color="grey", lw=0.5)
    left.legend()
    for arm, values in latencies.items():
        if len(values):
            right.hist(values, bins=30, alpha=0.6, label=f"{arm} (p99 {np.percentile(values, 99):.0f} ms)")
    right.set_xlabel("latency over HTTP (ms)")
    right.legend()
    fig.suptitle(f"A/B replay {blessing['date']}: {'blessed' if blessing['blessed'] else 'not blessed'}")
    fig.tight_layout()
    return fig


