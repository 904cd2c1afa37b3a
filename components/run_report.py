"""The run report of one date (written by `promote`, whatever it decides, and logged to MLflow).

Sections: the decision and its gates; offline metrics against the champion; trends over the last `report_days`
dates (offline Recall/NDCG@10 of candidate and champion, the online blessing and stay-time difference); the loss
curves of the candidate's training stages (pretrain, sft, rl of its date); codebook usage of its tokenizer; the
A/B results with intervals (online_validate's table). Markdown plus two PNGs (trends, losses), all read from
finished stage directories, so a report can be rebuilt for any past date.
"""
from __future__ import annotations

import json

TREND_METRICS = ("recall_at_10", "ndcg_at_10")
TRAIN_STAGES = ("pretrain", "sft", "rl")


def _json(d, name: str):
    try:
        return json.loads(d.read_bytes(name))
    except (FileNotFoundError, ValueError):
        return None


def trends(ctx, days: int) -> list[dict]:
    """One row per date (oldest first) among D and the `days - 1` dates before it that have an evaluation."""
    import datetime as dt

    rows = []
    d0 = dt.date.fromisoformat(ctx.date)
    for i in range(days - 1, -1, -1):
        date = (d0 - dt.timedelta(days=i)).isoformat()
        ev = ctx.dir("evaluate", date)
        data = _json(ev, "metrics.json") if ev.is_done() else None
        if data is None:
            continue
        champion = (data.get("champion") or {}).get("metrics") or {}
        row = {"date": date, "model": data.get("evaluated_model")}
        row.update({k: data["metrics"].get(k) for k in TREND_METRICS})
        row.update({f"champion_{k}": champion.get(k) for k in TREND_METRICS})
        ov = ctx.dir("online_validate", date)
        blessing = _json(ov, "blessing.json") if ov.is_done() else None
        if blessing and not blessing.get("skipped"):
            row["blessed"] = blessing.get("blessed")
            row["diff_stay_time_s"] = ((blessing.get("differences") or {}).get("stay_time_s") or {}).get("diff")
        # decision.json is written before a rejection's exit 3 too (that directory then has no _SUCCESS)
        row["decision"] = (_json(ctx.dir("promote", date), "decision.json") or {}).get("decision")
        rows.append(row)
    return rows


def losses(ctx, evaluated: str) -> dict[str, list[float]]:
    """Loss per step of each training stage of the candidate's date (train.json)."""
    _, date, _ = evaluated.split("/")
    out = {}
    for stage in TRAIN_STAGES:
        d = ctx.dir(stage, date)
        train = _json(d, "train.json") if d.is_done() else None
        if train and train.get("losses"):
            out[stage] = [float(x) for x in train["losses"]]
    return out


def codebook(ctx, evaluated: str) -> dict:
    _, date, _ = evaluated.split("/")
    d = ctx.dir("tokenize", date)
    return (d.manifest().get("metrics") or {}) if d.is_done() else {}


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def ab_text(ctx) -> str | None:
    """online_validate(D)'s A/B table (ab.md), when it ran."""
    d = ctx.dir("online_validate")
    if not d.is_done() or not d.store.exists(d.key("ab.md")):
        return None
    return d.read_bytes("ab.md").decode()


def markdown(ctx, evaluation: dict, blessing: dict | None, passed: list, failed: list, decision: dict,
             trend_rows: list[dict], loss_curves: dict, codebook_metrics: dict, ab: str | None) -> str:
    lines = [f"# OneRec run report {ctx.pipeline} {ctx.date}", "",
             f"- candidate: `{evaluation['evaluated_model']}`" + (" (same-day evaluation)" if evaluation.get("same_day") else ""),
             f"- champion before: {decision.get('champion_before') or 'none'}",
             f"- decision: **{decision['decision']}**" + (f" -> version {decision['version']}" if decision.get("version") else ""),
             "", "## Gates", ""]
    lines += [f"- [x] {g}" for g in passed] + [f"- [ ] {g}" for g in failed]
    cm = ((evaluation.get("champion") or {}).get("metrics")) or {}
    lines += ["", "## Offline metrics against the champion", "", "| metric | candidate | champion | delta |",
              "|---|---|---|---|"]
    for k, v in sorted(evaluation["metrics"].items()):
        if not isinstance(v, (int, float)):
            continue
        c = cm.get(k)
        lines.append(f"| {k} | {float(v):.4f} | {'-' if c is None else f'{float(c):.4f}'} | "
                     f"{'-' if c is None else f'{float(v) - float(c):+.4f}'} |")
    lines += ["", f"## Trends (last {len(trend_rows)} evaluated dates)", "", "![trends](trends.png)", "",
              "| date | candidate | recall@10 | champion recall@10 | ndcg@10 | champion ndcg@10 | blessed | "
              "stay-time diff (s/request) | decision |", "|---|---|---|---|---|---|---|---|---|"]
    for r in trend_rows:
        lines.append(f"| {r['date']} | `{r['model']}` | {_fmt(r.get('recall_at_10'))} | "
                     f"{_fmt(r.get('champion_recall_at_10'))} | {_fmt(r.get('ndcg_at_10'))} | "
                     f"{_fmt(r.get('champion_ndcg_at_10'))} | {_fmt(r.get('blessed'))} | "
                     f"{_fmt(r.get('diff_stay_time_s'))} | {_fmt(r.get('decision'))} |")
    lines += ["", "## Loss curves of the candidate's date", "", "![losses](losses.png)", "",
              "| stage | steps | first loss | last loss |", "|---|---|---|---|"]
    lines += [f"| {s} | {len(v)} | {v[0]:.4f} | {v[-1]:.4f} |" for s, v in loss_curves.items()]
    levels = sorted({k.split("_")[0] for k in codebook_metrics if k.startswith("level")})
    lines += ["", "## Codebook usage (the candidate's tokenizer)", "",
              "| level | codebook size | used | utilization | entropy ratio | max/mean cluster |", "|---|---|---|---|---|---|"]
    for lv in levels:
        g = lambda k: codebook_metrics.get(f"{lv}_{k}")  # noqa: E731
        lines.append(f"| {lv[5:]} | {_fmt(g('codebook_size'))} | {_fmt(g('used'))} | {_fmt(g('utilization'))} | "
                     f"{_fmt(g('entropy_ratio'))} | {_fmt(g('max_over_mean'))} |")
    if codebook_metrics:
        lines.append(f"\nitems {_fmt(codebook_metrics.get('items'))}, native collision rate "
                     f"{_fmt(codebook_metrics.get('native_collision_rate'))}, collision rate after handling "
                     f"{_fmt(codebook_metrics.get('collision_rate'))}")
    lines += ["", "## Online A/B", ""]
    if blessing is None:
        lines.append("online validation was switched off (online_validate.enabled: false)")
    elif ab:
        lines += ab.splitlines()[2:]   # its own title is this section's
    else:
        lines += [f"- {r}" for r in blessing.get("reasons") or []]
    return "\n".join(lines) + "\n"


def figures(ctx, trend_rows: list[dict], loss_curves: dict) -> dict:
    """{"trends.png": figure, "losses.png": figure}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig_t, ax = plt.subplots(figsize=(7, 3.5))
    dates = [r["date"][5:] for r in trend_rows]
    for key, style in (("recall_at_10", "o-"), ("champion_recall_at_10", "s--"), ("ndcg_at_10", "o-"),
                       ("champion_ndcg_at_10", "s--")):
        ys = [r.get(key) for r in trend_rows]
        if any(y is not None for y in ys):
            ax.plot(dates, [float("nan") if y is None else y for y in ys], style, label=key)
    ax.set_title(f"offline metrics, last {len(trend_rows)} dates up to {ctx.date}")
    if ax.lines:
        ax.legend(fontsize=7)
    fig_t.tight_layout()
    fig_l, ax = plt.subplots(figsize=(7, 3.5))
    offset = 0
    for stage, values in loss_curves.items():   # stages one after another on a shared step axis
        ax.plot(range(offset, offset + len(values)), values, label=stage)
        offset += len(values)
    ax.set_xlabel("logged step (pretrain, then sft, then rl)")
    ax.set_ylabel("loss")
    if ax.lines:
        ax.legend()
    fig_l.tight_layout()
    return {"trends.png": fig_t, "losses.png": fig_l}
