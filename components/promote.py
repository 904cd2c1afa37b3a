"""`promote`: the only stage that moves the registry's `champion` alias.

promote(D) reads evaluate(D)'s metrics.json (the candidate = the newest post-trained model before D, scored on D
next to the current champion) and online_validate(D)'s blessing.json (an upstream; a blessing marked `skipped`,
written when `online_validate.enabled` is false, means no online gates). Gates (config section `promote`):
  absolute  invalid rate <= max_invalid_rate (0), users >= min_users, same-day evaluations only if allowed,
            online validation: of this very candidate, blessed, error rate, invalid rate, p99 latency within the SLO;
  relative  (only when there is a champion) no metric in `tolerances` below champion - tolerance.
A candidate that passes is written as a registry bundle (model_registry.write_bundle: its stage directory + its
own date's tokenizer tables), registered as a new version of `promote.registered_model` with the policy's version
tags (onerec.blessed=true), and becomes `champion`; the old champion becomes `previous`. Each alias change is
recorded on the versions as tags (who, when, why, metrics; mlflow/registry_policy.yaml). The first run, with no
champion, promotes the first candidate that passes the absolute gates. A candidate that already is the champion
(same output digest) is a no-op. Any failed gate raises GateFailed (exit 3: the orchestrators skip downstream)
with one line naming every failed gate; the aliases are untouched. Outputs: decision.json and the date's run
report (components.run_report: report.md, trends.png, losses.png), also when the candidate is rejected.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

from onerec.errors import BadInput, GateFailed

ONLINE = "online_validate"


def _name(ctx) -> str:
    from onerec import model_registry

    return ctx.section.get("registered_model") or model_registry.DEFAULT_NAME


def _blessing(ctx) -> dict | None:
    """online_validate(D)'s blessing.json (an upstream of promote); None when that validation was switched off."""
    try:
        blessing = json.loads(ctx.upstream(ONLINE).read_bytes("blessing.json"))
    except (FileNotFoundError, ValueError) as e:
        raise BadInput(f"promote {ctx.date}: online_validate's blessing.json is unreadable ({e})") from None
    if not isinstance(blessing, dict) or "blessed" not in blessing:
        raise BadInput(f"promote {ctx.date}: online_validate's blessing.json has no 'blessed'")
    return None if blessing.get("skipped") else blessing


def external_inputs(ctx) -> dict:
    from onerec import model_registry

    inputs = {}
    champion = model_registry.resolve_alias(_name(ctx), model_registry.CHAMPION, ctx.config["mlflow"]["tracking_uri"])
    if champion is not None:
        inputs["champion"] = f"{champion.name}/{champion.version}"
    return inputs


def read_evaluation(ctx, who: str = "promote") -> dict:
    """evaluate(D)'s metrics.json: the candidate (`evaluated_model`) and its metrics next to the champion's."""
    ev = ctx.upstream("evaluate")
    try:
        data = json.loads(ev.read_bytes("metrics.json"))
    except (FileNotFoundError, ValueError) as e:
        raise BadInput(f"{who} {ctx.date}: evaluate's metrics.json is missing or not JSON ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("metrics"), dict) or "evaluated_model" not in data:
        raise BadInput(f"{who} {ctx.date}: evaluate's metrics.json lacks 'metrics' / 'evaluated_model'")
    return data


def candidate_dirs(ctx, evaluated: str, who: str = "promote"):
    """(model stage dir, tokenize dir of the model's own date) of the evaluated candidate."""
    parts = str(evaluated).split("/")
    if len(parts) != 3:
        raise BadInput(f"{who} {ctx.date}: evaluated_model {evaluated!r} is not <pipeline>/<date>/<stage>")
    pipeline, date, stage = parts
    if pipeline != ctx.pipeline:
        raise BadInput(f"{who} {ctx.date}: evaluated model {evaluated} is from another pipeline")
    model_dir, tokenize_dir = ctx.dir(stage, date), ctx.dir("tokenize", date)
    for d in (model_dir, tokenize_dir):
        if not d.is_done():
            raise BadInput(f"{who} {ctx.date}: {d.prefix} has no _SUCCESS at {d.uri()}")
    return model_dir, tokenize_dir


def gates(evaluation: dict, blessing: dict | None, section: dict, champion_version: str | None) -> tuple[list, list]:
    """(passed, failed): one human-readable line per gate."""
    passed, failed = [], []

    def check(ok: bool, line: str):
        (passed if ok else failed).append(line)

    m = evaluation["metrics"]
    max_invalid = float(section.get("max_invalid_rate", 0.0))
    invalid = m.get("invalid_rate")
    check(invalid is not None and float(invalid) <= max_invalid, f"invalid_rate={invalid} <= {max_invalid}")
    min_users = int(section.get("min_users", 1))
    check(int(m.get("users", 0)) >= min_users, f"users={m.get('users', 0)} >= {min_users}")
    if evaluation.get("same_day"):
        check(bool(section.get("allow_same_day", True)), "same-day evaluation allowed (promote.allow_same_day)")

    champion = evaluation.get("champion") or None
    if champion_version is not None:
        if champion is None or champion.get("version") != champion_version:
            seen = None if champion is None else champion.get("version")
            failed.append(f"evaluated against the current champion {champion_version} (evaluate saw {seen}; rerun evaluate)")
        else:
            cm = champion.get("metrics") or {}
            for metric, tol in (section.get("tolerances") or {}).items():
                if metric not in m or metric not in cm:
                    failed.append(f"{metric}: missing from the evaluation")
                    continue
                new, old, tol = float(m[metric]), float(cm[metric]), float(tol)
                check(new >= old - tol, f"{metric}={new:.4f} >= champion {old:.4f} - {tol}")

    if blessing is not None:
        if "challenger_model" in blessing:
            check(blessing["challenger_model"] == evaluation["evaluated_model"],
                  f"online validation is of the candidate ({blessing['challenger_model']})")
        check(bool(blessing.get("blessed")), f"online validation blessed ({'; '.join(blessing.get('reasons') or []) or '-'})")
        arm = (blessing.get("arms") or {}).get("challenger") or {}
        slo = section.get("latency_p99_ms")
        p99 = arm.get("latency_p99_ms")
        if slo is not None:
            check(p99 is not None and float(p99) <= float(slo), f"online latency_p99_ms={p99} <= {slo}")
        max_err = float(section.get("max_error_rate", 0.0))
        err = arm.get("error_rate")
        check(err is not None and float(err) <= max_err, f"online error_rate={err} <= {max_err}")
        inv = arm.get("invalid_rate")
        check(inv is not None and float(inv) <= max_invalid, f"online invalid_rate={inv} <= {max_invalid}")
    return passed, failed


def _report(ctx, evaluation, blessing, passed, failed, decision) -> None:
    """The run report of D (components.run_report) into the stage directory and MLflow, whatever the decision."""
    import mlflow

    from components import run_report

    trend_rows = run_report.trends(ctx, int(ctx.section.get("report_days", 7)))
    if not trend_rows or trend_rows[-1]["date"] != ctx.date:
        trend_rows.append({"date": ctx.date, "model": evaluation["evaluated_model"]})
    trend_rows[-1]["decision"] = decision["decision"]
    curves = run_report.losses(ctx, evaluation["evaluated_model"])
    text = run_report.markdown(ctx, evaluation, blessing, passed, failed, decision, trend_rows, curves,
                               run_report.codebook(ctx, evaluation["evaluated_model"]), run_report.ab_text(ctx))
    ctx.out.write_bytes("report.md", text.encode())
    mlflow.log_text(text, "report/report.md")
    for name, fig in run_report.figures(ctx, trend_rows, curves).items():
        ctx.save_figure(name, fig, folder="report")


def run(ctx) -> dict:
    import mlflow

    from onerec import model_registry

    s, name, uri = ctx.section, _name(ctx), ctx.config["mlflow"]["tracking_uri"]
    evaluation = read_evaluation(ctx)
    blessing = _blessing(ctx)
    model_dir, tokenize_dir = candidate_dirs(ctx, evaluation["evaluated_model"])
    champion = model_registry.resolve_alias(name, model_registry.CHAMPION, uri)
    champion_version = None if champion is None else f"{champion.name}/{champion.version}"

    digest = model_dir.digest()
    if champion is not None and (champion.tags or {}).get("onerec.output_digest") == digest:
        # a rerun after this very candidate was promoted: nothing to gate, nothing to move
        passed, failed = [f"{evaluation['evaluated_model']} already is the champion ({champion_version})"], []
    else:
        passed, failed = gates(evaluation, blessing, s, champion_version)
    gated = {k: v for k, v in evaluation["metrics"].items()
             if k in (s.get("tolerances") or {}) or k in ("invalid_rate", "users")}
    decision = {"candidate": evaluation["evaluated_model"], "champion_before": champion_version,
                "passed": passed, "failed": failed, "metrics": gated, "online": blessing is not None}
    mlflow.set_tags({"onerec.promote_candidate": evaluation["evaluated_model"],
                     "onerec.promote_champion_before": champion_version or "none"})
    if failed:
        decision["decision"] = "rejected"
        ctx.out.write_json("decision.json", decision)
        _report(ctx, evaluation, blessing, passed, failed, decision)
        mlflow.set_tag("onerec.promote_decision", "rejected")
        raise GateFailed(f"promote {ctx.date}: {evaluation['evaluated_model']} not promoted; failed gates: "
                         + "; ".join(failed))

    if champion is not None and (champion.tags or {}).get("onerec.output_digest") == digest:
        decision.update(decision="unchanged", version=str(champion.version))
    else:
        why = (f"promote {ctx.pipeline}/{ctx.date}: {evaluation['evaluated_model']} passed "
               f"{len(passed)} gates" + ("" if champion is not None else " (first champion)"))
        with tempfile.TemporaryDirectory(prefix="onerec-promote-") as tmp:
            folder = model_registry.write_bundle(Path(tmp) / "bundle", model_dir, tokenize_dir)
            codebook = json.loads((folder / "codebook.json").read_text())
            meta = json.loads((folder / "model.json").read_text())
            if meta.get("codebook_digest") not in (None, codebook.get("digest")):
                raise BadInput(f"promote {ctx.date}: {evaluation['evaluated_model']} was trained for another codebook "
                               f"than tokenize {tokenize_dir.date}")
            version = model_registry.register(folder, name, run_id=ctx.mlflow_run_id, tracking_uri=uri,
                                              tags=model_registry.version_tags(model_dir, tokenize_dir, blessed=True))
        model_registry.promote(name, version, why=why, metrics=gated, tracking_uri=uri)
        decision.update(decision="promoted", version=version)
    ctx.out.write_json("decision.json", decision)
    _report(ctx, evaluation, blessing, passed, failed, decision)
    mlflow.set_tag("onerec.promote_decision", decision["decision"])
    return {"blessed": True, "promoted": int(decision["decision"] == "promoted"), "gates_passed": len(passed),
            "version": decision["version"], "first_champion": int(champion is None)}
