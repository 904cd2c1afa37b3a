"""`onerec lineage`: from a registered model version down to the data, on a real debug pipeline run."""
from __future__ import annotations

import json

from support import run_cli

DATE = "2026-01-02"


def test_lineage_of_a_registered_model_from_a_real_pipeline_run(pipeline_home):
    from onerec import model_registry
    from onerec.store import StageDir, open_store

    home = pipeline_home
    uri = f"sqlite:///{home / 'mlflow.db'}"
    store = open_store(str(home / "artifacts"))
    pretrain, tokenize = (StageDir(store, "daily", DATE, s) for s in ("pretrain", "tokenize"))
    bundle = model_registry.write_bundle(home / "bundle", pretrain, tokenize)
    run_id = pretrain.manifest()["mlflow_run_id"]
    version = model_registry.register(bundle, "onerec", run_id=run_id, tracking_uri=uri,
                                      tags=model_registry.version_tags(pretrain, tokenize))
    model_registry.set_alias("onerec", model_registry.CHAMPION, version, tracking_uri=uri)

    text = run_cli("lineage", "onerec", "champion", check=True).stdout
    chain = json.loads(run_cli("lineage", "onerec", version, "--json", check=True).stdout)

    # model version -> training run
    assert chain["model"]["version"] == version and chain["model"]["aliases"] == ["champion"]
    train = chain["training_run"]
    assert train["run_id"] == run_id and (train["stage"], train["date"], train["pipeline"]) == ("pretrain", DATE, "daily")
    assert train["output_digest"] == pretrain.digest()
    # -> datasets: every upstream stage of the day, by the exact run that committed the digest pretrain read
    stages = {d["stage"] for d in chain["datasets"]}
    assert {"features", "tokenize", "embed", "ingest", "validate"} <= stages
    for d in chain["datasets"]:
        sd = StageDir(store, "daily", d["date"], d["stage"])
        assert d["output_digest"] == sd.digest() and d["run_id"] == sd.manifest()["mlflow_run_id"], d
    ingest = next(d for d in chain["datasets"] if d["stage"] == "ingest")
    # the synthetic source has no files: the day's data is named by its digest and the generator's config hash
    assert ingest["config_hash"] == StageDir(store, "daily", DATE, "ingest").manifest()["config_hash"]
    for child in train["inputs"]:
        assert child["digest_matches"] and pretrain.manifest()["input_digests"][child["stage"]].startswith(
            child["input_digest"])
    # -> tokenizer version
    codebook = json.loads(tokenize.read_bytes("codebook.json"))["digest"]
    assert codebook.startswith(chain["tokenizer"]["codebook_digest"])
    assert chain["tokenizer"]["run_id"] == tokenize.manifest()["mlflow_run_id"]
    # -> DAG run and date (the fixture ran the local runner: no orchestrator run, the date's parent run)
    assert chain["dag_run"]["date"] == DATE and chain["dag_run"]["mlflow_parent_name"] == f"daily {DATE}"
    assert chain["dag_run"]["orchestrator_run"] is None

    assert f"onerec version {version} (aliases: champion)" in text
    assert f"training run {run_id}  pretrain daily/{DATE}" in text
    assert "<- tokenize" in text and "<- ingest" in text and f"codebook {codebook[:16]}" in text
    assert "local runner" in text and f"date         {DATE}" in text

    missing = run_cli("lineage", "onerec", "challenger")
    assert missing.returncode == 2 and missing.stderr.startswith("error: no model version onerec/challenger")


def test_rollback_moves_champion_to_previous(tmp_path):
    import mlflow

    from onerec import model_registry as mr

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.create_experiment("onerec", artifact_location=(tmp_path / "mlartifacts").as_uri())
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x.txt").write_text("x")
    v1 = mr.register(tmp_path / "b", "rollback-test", tracking_uri=uri)
    v2 = mr.register(tmp_path / "b", "rollback-test", tracking_uri=uri)
    mr.set_alias("rollback-test", mr.CHAMPION, v2, tracking_uri=uri)
    mr.set_alias("rollback-test", mr.PREVIOUS, v1, tracking_uri=uri)
    assert mr.rollback("rollback-test", tracking_uri=uri) == v1
    assert str(mr.resolve_alias("rollback-test", mr.CHAMPION, uri).version) == v1
    assert str(mr.resolve_alias("rollback-test", mr.CHALLENGER, uri).version) == v2
    assert mr.resolve_alias("rollback-test", mr.PREVIOUS, uri) is None
