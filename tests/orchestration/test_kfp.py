"""The Kubeflow pipeline: generated from the registry, checked-in YAML up to date, runs locally."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from components.registry import stages_for
from pipelines.onerec_kfp import DEFAULT_IMAGE, PIPELINES, build_pipeline, compile_pipeline, run_stage

REPO = Path(__file__).resolve().parents[2]
DEBUG = str(REPO / "configs" / "debug.yaml")
DATE = "2026-01-02"

pytestmark = pytest.mark.orchestration


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_checked_in_yaml_is_a_fresh_compile(tmp_path, pipeline):
    fresh = compile_pipeline(pipeline, tmp_path / f"onerec_{pipeline}.yaml", base_image=DEFAULT_IMAGE).read_text()
    checked_in = REPO / "pipelines" / f"onerec_{pipeline}.yaml"
    assert checked_in.read_text() == fresh, f"{checked_in} is stale: run `python -m pipelines.onerec_kfp`"


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_tasks_mirror_the_registry(pipeline):
    spec = yaml.safe_load((REPO / "pipelines" / f"onerec_{pipeline}.yaml").read_text())
    tasks = spec["root"]["dag"]["tasks"]
    by_stage = {t["taskInfo"]["name"]: t for t in tasks.values()}
    key_of = {t["taskInfo"]["name"]: k for k, t in tasks.items()}
    stages = stages_for(pipeline)
    assert len(tasks) == len(by_stage) and set(by_stage) == {s.name for s in stages}
    for s in stages:
        t = by_stage[s.name]
        assert set(t.get("dependentTasks", [])) == {key_of[u] for u in s.upstream}
        assert t.get("retryPolicy", {}).get("maxRetryCount", 0) == s.retries
        assert t["cachingOptions"].get("enableCache", False) == bool(s.upstream)  # keyed on upstream digests
        assert t["inputs"]["parameters"]["stage"]["runtimeValue"]["constant"] == s.name


@pytest.mark.parametrize("code, error, message", [(1, "RuntimeError", "failed"), (2, "RuntimeError", "bad data"),
                                                  (3, "GateNotPassed", "gate not passed")])
def test_component_maps_exit_codes(tmp_path, monkeypatch, code, error, message):
    import sys

    fake = tmp_path / "python"
    fake.write_text(f"#!/bin/sh\nexit {code}\n")
    fake.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(fake))
    with pytest.raises(Exception, match=message) as info:
        run_stage("validate", DATE, "daily", "", [], "ingest=abc")
    assert type(info.value).__name__ == error


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Task .* have no effect in the current local runner")
def test_local_run(tmp_path, onerec_home):
    from kfp import local

    root = tmp_path / "kfp"
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root))
    build_pipeline("daily")(date=DATE, config_path=DEBUG)
    for s in stages_for("daily"):
        d = onerec_home / "artifacts" / "daily" / DATE / s.name
        assert (d / "_SUCCESS").is_file(), d
    # each task returned its stage's digest, and that is what the downstream stage consumed
    outputs = {p.parent.name: json.loads(p.read_text())["parameterValues"]["Output"]
               for p in root.glob("onerec-daily-*/*/executor_output.json")}
    validate = json.loads((onerec_home / "artifacts" / "daily" / DATE / "validate" / "manifest.json").read_text())
    assert validate["input_digests"]["ingest"] == outputs["run-stage"]
