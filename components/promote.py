"""`promote`: the only stage that moves the registry's `champion` alias.

promote(D) reads evaluate(D)'s metrics.json (the candidate = the newest post-trained model before D, scored on D
next to the current champion) and online_validate(D)'s blessing.json (an upstream; a blessing marked `skipped`,
written when `online_validate.enabled` is false, means no online gates). Gates (config section `promote`):
  absolute  invalid rate <= max_invalid_rate (0), users >= min_users, same-day evaluations only if allowed,
            online validation: of this very candidate, blessed, error rate, invalid rate, p99 latency within the SLO;
  relative  (only when there is a champion) no metric in `tolerances` below champion - tolerance.
A candidate that passes is written as a registry bundle (model_registry.write_bundle: its stage directory + its
own date's tokenizer tables), registered as a new version of the `registry:` section's model with the policy's
version tags (onerec.blessed=true), and becomes the champion alias; the old champion becomes `previous`. Each alias change is
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

from components.common import PromoteConfig, candidate_dirs, champion, read_evaluation, registry, stage_config
from onerec.errors import BadInput, GateFailed

ONLINE = "online_validate"


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
    current = champion(ctx)
    return {} if current is None else {"champion": f"{current.name}/{current.version}"}


def gates(evaluation: dict, blessing: dict | None, section: dict | PromoteConfig,
          champion_version: str | None) -> tuple[list, list]:
    """(passed, failed): one human-readable line per gate. `section`: the promote options (missing ones default)."""
    cfg = section if isinstance(section, PromoteConfig) else PromoteConfig(**section)
    passed, failed = [], []

    def check(ok: bool, line: str):
        (passed if ok else failed).append(line)

    m = evaluation["metrics"]
    max_invalid = float(cfg.max_invalid_rate)
    invalid = m.get("invalid_rate")
    check(invalid is not None and float(invalid) <= max_invalid, f"invalid_rate={invalid} <= {max_invalid}")
    min_users = int(cfg.min_users)
    check(int(m.get("users", 0)) >= min_users, f"users={m.get('users', 0)} >= {min_users}")
    if evaluation.get("same_day"):
        check(bool(cfg.allow_same_day), "same-day evaluation allowed (promote.allow_same_day)")

    champion = evaluation.get("champion") or None
    if champion_version is not None:
        if champion is None or champion.get("version") != champion_version:
            seen = None if champion is None else champion.get("version")
            failed.append(f"evaluated against the current champion {champion_version} (evaluate saw {seen}; rerun evaluate)")
        else:
            cm = champion.get("metrics") or {}
            for metric, tol in (cfg.tolerances or {}).items():
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
        slo = cfg.latency_p99_ms
        p99 = arm.get("latency_p99_ms")
        if slo is not None:
            check(p99 is not None and float(p99) <= float(slo), f"online latency_p99_ms={p99} <= {slo}")
        max_err = float(cfg.max_error_rate)
        err = arm.get("error_rate")
        check(err is not None and float(err) <= max_err, f"online error_rate={err} <= {max_err}")
        inv = arm.get("invalid_rate")
        check(inv is not None and float(inv) <= max_invalid, f"online invalid_rate={inv} <= {max_invalid}")
    return passed, failed


def _report(ctx, evaluation, blessing, passed, failed, decision) -> None:
    """The run report of D (components.run_report) into the stage directory and MLflow, whatever the decision."""
    import mlflow

    from components import run_report

    trend_rows = run_report.trends(ctx, int(stage_config(ctx, PromoteConfig).report_days))
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

    s, uri = stage_config(ctx, PromoteConfig), ctx.config["mlflow"]["tracking_uri"]
    name, alias = registry(ctx).model, registry(ctx).champion_alias
    evaluation = read_evaluation(ctx)
    blessing = _blessing(ctx)
    model_dir, tokenize_dir = candidate_dirs(ctx, evaluation["evaluated_model"])
    current = champion(ctx)
    champion_version = None if current is None else f"{current.name}/{current.version}"

    digest = model_dir.digest()
    if current is not None and (current.tags or {}).get("onerec.output_digest") == digest:
        # a rerun after this very candidate was promoted: nothing to gate, nothing to move
        passed, failed = [f"{evaluation['evaluated_model']} already is the champion ({champion_version})"], []
    else:
        passed, failed = gates(evaluation, blessing, s, champion_version)
    gated = {k: v for k, v in evaluation["metrics"].items()
             if k in (s.tolerances or {}) or k in ("invalid_rate", "users")}
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

    if current is not None and (current.tags or {}).get("onerec.output_digest") == digest:
        decision.update(decision="unchanged", version=str(current.version))
    else:
        why = (f"promote {ctx.pipeline}/{ctx.date}: {evaluation['evaluated_model']} passed "
               f"{len(passed)} gates" + ("" if current is not None else " (first champion)"))
        with tempfile.TemporaryDirectory(prefix="onerec-promote-") as tmp:
            folder = model_registry.write_bundle(Path(tmp) / "bundle", model_dir, tokenize_dir)
            codebook = json.loads((folder / "codebook.json").read_text())
            meta = json.loads((folder / "model.json").read_text())
            if meta.get("codebook_digest") not in (None, codebook.get("digest")):
                raise BadInput(f"promote {ctx.date}: {evaluation['evaluated_model']} was trained for another codebook "
                               f"than tokenize {tokenize_dir.date}")
            version = model_registry.register(folder, name, run_id=ctx.mlflow_run_id, tracking_uri=uri,
                                              tags=model_registry.version_tags(model_dir, tokenize_dir, blessed=True))
        model_registry.promote(name, version, why=why, metrics=gated, tracking_uri=uri, champion=alias)
        decision.update(decision="promoted", version=version)
    ctx.out.write_json("decision.json", decision)
    _report(ctx, evaluation, blessing, passed, failed, decision)
    mlflow.set_tag("onerec.promote_decision", decision["decision"])
    return {"blessed": True, "promoted": int(decision["decision"] == "promoted"), "gates_passed": len(passed),
            "version": decision["version"], "first_champion": int(current is None)}
