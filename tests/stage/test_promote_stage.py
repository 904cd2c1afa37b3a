"""The promote stage and `onerec model rollback` on crafted stage directories (no training: seconds on CPU).

Stage directories for pretrain/tokenize/evaluate are written with the store API, so promote sees exactly what the
real stages would hand it: a finished model directory, its day's tokenizer tables and evaluate's metrics.json.
"""
from __future__ import annotations

import json

import pytest

from support import DEBUG_CONFIG

NAME = "onerec"


def _finish(d, files: dict) -> None:
    d.reset()
    for name, data in files.items():
        d.write_bytes(name, data if isinstance(data, bytes) else json.dumps(data).encode())
    d.commit({"pipeline": d.pipeline, "date": d.date, "stage": d.stage, "code_version": "test", "metrics": {}})


def _model(store, date: str, seed: int) -> None:
    from onerec.store import StageDir

    _finish(StageDir(store, "daily", date, "tokenize"),
            {"trie.safetensors": b"trie", "sids.parquet": b"sids", "codebook.json": {"digest": "cb"}})
    _finish(StageDir(store, "daily", date, "pretrain"),
            {"model.safetensors": f"weights {seed}".encode(), "model.json": {"codebook_digest": "cb", "model_config": {}}})


def _metrics(recall: float, invalid: float = 0.0) -> dict:
    return {"recall_at_10": recall, "ndcg_at_10": recall / 2, "hr_at_10": recall, "users": 50, "invalid_rate": invalid}


def _evaluate(store, date: str, model_date: str, metrics: dict, champion: tuple[str, dict] | None,
              blessed: bool | None = None) -> None:
    """evaluate(D) and online_validate(D) as those stages leave them; blessed=None: online validation switched off."""
    from onerec.store import StageDir

    _finish(StageDir(store, "daily", date, "evaluate"), {"metrics.json": {
        "evaluated_model": f"daily/{model_date}/pretrain", "same_day": False, "trie_from": date, "metrics": metrics,
        "champion": None if champion is None else {"version": champion[0], "metrics": champion[1]}}})
    arm = {"latency_p99_ms": 40.0, "error_rate": 0.0, "invalid_rate": 0.0, "metrics": {}}
    blessing = {"blessed": True, "skipped": True, "reasons": []} if blessed is None else {
        "blessed": blessed, "reasons": ["ok: ..." if blessed else "FAIL: stay_time_s: challenger - champion -9"],
        "challenger_model": f"daily/{model_date}/pretrain", "arms": {"challenger": arm}}
    _finish(StageDir(store, "daily", date, "online_validate"), {"blessing.json": blessing})


@pytest.fixture
def world(onerec_home):
    from onerec.config import load_config, resolved
    from onerec.store import open_store

    config = load_config(str(DEBUG_CONFIG), [])
    cfg = resolved(config)
    store = open_store(cfg["store"]["root"])
    for i, date in enumerate(("2026-01-01", "2026-01-02", "2026-01-03")):
        _model(store, date, i)
    return config, store, cfg["mlflow"]["tracking_uri"]


def _promote(date: str) -> int:
    from components.cli import main

    return main(["run", "promote", "--date", date, "--config", str(DEBUG_CONFIG)])


def _alias(alias: str, uri: str):
    from onerec import model_registry

    v = model_registry.resolve_alias(NAME, alias, uri)
    return None if v is None else str(v.version)


def _events(version: str, uri: str) -> list[dict]:
    from mlflow import MlflowClient

    tags = MlflowClient(tracking_uri=uri).get_model_version(NAME, version).tags
    return [json.loads(v) for k, v in sorted(tags.items()) if k.startswith("onerec.alias_event.")]


def test_promotion_gates_aliases_and_rollback(world, capsys):
    from components.cli import main
    from onerec.store import StageDir

    config, store, uri = world
    # day 2: no champion yet -> the first candidate passing the absolute gates becomes champion
    _evaluate(store, "2026-01-02", "2026-01-01", _metrics(0.30), None)
    assert _promote("2026-01-02") == 0
    first = _alias("champion", uri)
    assert first is not None and _alias("previous", uri) is None
    decision = json.loads(StageDir(store, "daily", "2026-01-02", "promote").read_bytes("decision.json"))
    assert decision["decision"] == "promoted" and decision["champion_before"] is None
    ev = _events(first, uri)
    assert ev[-1]["alias"] == "champion" and ev[-1]["who"] and ev[-1]["when"] and "first champion" in ev[-1]["why"]
    assert ev[-1]["metrics"]["recall_at_10"] == 0.30
    from mlflow import MlflowClient

    tags = MlflowClient(tracking_uri=uri).get_model_version(NAME, first).tags
    assert tags["onerec.blessed"] == "true" and tags["onerec.date"] == "2026-01-01"

    # day 3: the challenger regresses beyond tolerance -> exit 3, one line naming the gate, alias unchanged
    capsys.readouterr()
    _evaluate(store, "2026-01-03", "2026-01-02", _metrics(0.20), (f"{NAME}/{first}", _metrics(0.30)))
    assert _promote("2026-01-03") == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "recall_at_10=0.2000 >= champion 0.3000" in err[0] and "failed gates" in err[0]
    assert _alias("champion", uri) == first and _alias("previous", uri) is None
    assert not StageDir(store, "daily", "2026-01-03", "promote").is_done()

    # an invalid SID fails the absolute gate even when the metrics improve
    _evaluate(store, "2026-01-03", "2026-01-02", _metrics(0.40, invalid=0.01), (f"{NAME}/{first}", _metrics(0.30)))
    assert _promote("2026-01-03") == 3 and _alias("champion", uri) == first

    # better offline, but the online A/B did not bless it -> exit 3 naming the online gate
    capsys.readouterr()
    _evaluate(store, "2026-01-03", "2026-01-02", _metrics(0.35), (f"{NAME}/{first}", _metrics(0.30)), blessed=False)
    assert _promote("2026-01-03") == 3 and _alias("champion", uri) == first
    assert "online validation blessed (FAIL: stay_time_s" in capsys.readouterr().err

    # a better challenger, blessed online -> champion moves, the old one becomes previous, both recorded as tags
    _evaluate(store, "2026-01-03", "2026-01-02", _metrics(0.35), (f"{NAME}/{first}", _metrics(0.30)), blessed=True)
    assert _promote("2026-01-03") == 0
    second = _alias("champion", uri)
    assert second != first and _alias("previous", uri) == first
    assert _events(second, uri)[-1]["replaced"] == first
    assert _events(first, uri)[-1]["alias"] == "previous"
    report = StageDir(store, "daily", "2026-01-03", "promote").read_bytes("report.md").decode()
    assert "promoted" in report and "| recall_at_10 | 0.3500 | 0.3000 | +0.0500 |" in report
    # the run report's trends hold every evaluated date up to D with its decision
    assert "| 2026-01-02 | `daily/2026-01-01/pretrain` | 0.3000 |" in report and "| promoted |" in report
    assert StageDir(store, "daily", "2026-01-03", "promote").read_bytes("trends.png")[:4] == b"\x89PNG"

    # rollback: previous -> champion, the rolled-back version kept as challenger, recorded as tags
    assert main(["model", "rollback", "--name", NAME, "--reason", "bad online metrics"]) == 0
    assert _alias("champion", uri) == first and _alias("challenger", uri) == second and _alias("previous", uri) is None
    last = _events(first, uri)[-1]
    assert last["alias"] in ("champion", "previous") and "bad online metrics" in last["why"]
    assert any(e["alias"] == "champion" and e["replaced"] == second for e in _events(first, uri))
    # nothing left to roll back to: exit 2, aliases untouched
    assert main(["model", "rollback"]) == 2 and _alias("champion", uri) == first


def test_bad_evaluation_is_bad_input(world):
    from onerec.store import StageDir

    _, store, uri = world
    _finish(StageDir(store, "daily", "2026-01-02", "evaluate"), {"metrics.json": {"nothing": 1}})
    _finish(StageDir(store, "daily", "2026-01-02", "online_validate"), {"blessing.json": {"blessed": True, "skipped": True}})
    assert _promote("2026-01-02") == 2 and _alias("champion", uri) is None


def test_gates_function():
    from components.promote import gates

    ev = {"metrics": _metrics(0.3), "champion": {"version": "onerec/1", "metrics": _metrics(0.305)}}
    section = {"tolerances": {"recall_at_10": 0.01}, "max_invalid_rate": 0.0, "latency_p99_ms": 100}
    passed, failed = gates(ev, None, section, "onerec/1")
    assert not failed                     # within tolerance
    # the champion moved since evaluate ran: stale comparison
    assert gates(ev, None, section, "onerec/2")[1]
    blessing = {"blessed": True, "arms": {"challenger": {"latency_p99_ms": 150, "error_rate": 0.0, "invalid_rate": 0.0}}}
    failed = gates(ev, blessing, section, "onerec/1")[1]
    assert failed == ["online latency_p99_ms=150 <= 100"]
    # a blessing of another model than the candidate does not count
    ev["evaluated_model"] = "daily/2026-01-02/rl"
    other = {**blessing, "challenger_model": "daily/2026-01-01/rl", "arms": {"challenger": {**blessing["arms"]["challenger"],
                                                                                          "latency_p99_ms": 50}}}
    assert gates(ev, other, section, "onerec/1")[1] == ["online validation is of the candidate (daily/2026-01-01/rl)"]
