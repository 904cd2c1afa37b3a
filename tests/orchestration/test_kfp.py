"""The Kubeflow pipeline: generated from the registry (container components of the stage image),
checked-in YAML up to date, gated promotion, exit handler, and a real local run (lightweight mode)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from components.registry import stages_for
from pipelines.onerec_kfp import (ACCELERATOR, DEFAULT_GPU_IMAGE, DEFAULT_IMAGE, PIPELINES, build_pipeline,
                                  compile_pipeline, gate_of, run_stage)

REPO = Path(__file__).resolve().parents[2]
DEBUG = str(REPO / "configs" / "debug.yaml")
DATE = "2026-01-02"

pytestmark = pytest.mark.orchestration


def all_tasks(spec: dict) -> dict:
    """Every task of the compiled pipeline, through the ExitHandler and dsl.If sub-DAGs: name -> (task, dag)."""
    out = {}
    for dag_name, comp in [("root", spec["root"]), *spec["components"].items()]:
        for key, t in comp.get("dag", {}).get("tasks", {}).items():
            out[t["taskInfo"]["name"]] = (key, t, dag_name)
    return out


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_checked_in_yaml_is_a_fresh_compile(tmp_path, pipeline):
    fresh = compile_pipeline(pipeline, tmp_path / f"onerec_{pipeline}.yaml", DEFAULT_IMAGE, DEFAULT_GPU_IMAGE).read_text()
    checked_in = REPO / "pipelines" / f"onerec_{pipeline}.yaml"
    assert checked_in.read_text() == fresh, f"{checked_in} is stale: run `python -m pipelines.onerec_kfp`"


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_tasks_mirror_the_registry(pipeline):
    spec = yaml.safe_load((REPO / "pipelines" / f"onerec_{pipeline}.yaml").read_text())
    tasks = all_tasks(spec)
    executors = spec["deploymentSpec"]["executors"]
    stages = stages_for(pipeline)
    assert {s.name for s in stages} <= set(tasks)
    for s in stages:
        key, t, _ = tasks[s.name]
        deps = {tasks[u][0] for u in s.upstream}
        # a dependency on a task outside the If block shows up on the condition task, not on this one
        assert set(t.get("dependentTasks", [])) <= deps
        assert t.get("retryPolicy", {}).get("maxRetryCount", 0) == s.retries
        assert t["cachingOptions"].get("enableCache", False) == bool(s.upstream)  # keyed on upstream digests
        assert t["inputs"]["parameters"]["stage"]["runtimeValue"]["constant"] == s.name
        container = executors[spec["components"][t["componentRef"]["name"]]["executorLabel"]]["container"]
        gpu = s.resources.get("gpu")
        assert container["image"] == (DEFAULT_GPU_IMAGE if gpu else DEFAULT_IMAGE)
        assert container["command"] == ["onerec"] and container["args"][:2] == ["run", "{{$.inputs.parameters['stage']}}"]
        res = container["resources"]
        assert res["resourceCpuRequest"] == str(s.resources["cpu"])
        assert res["resourceMemoryRequest"] == res["resourceMemoryLimit"] == s.resources["memory"]
        if gpu:
            assert res["accelerator"]["resourceType"] == ACCELERATOR
            assert res["accelerator"]["resourceCount"] == str(gpu)
        else:
            assert "accelerator" not in res


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_promotion_is_gated_and_alerts_run_on_exit(pipeline):
    spec = yaml.safe_load((REPO / "pipelines" / f"onerec_{pipeline}.yaml").read_text())
    tasks = all_tasks(spec)
    gated, source = gate_of(stages_for(pipeline))
    _, t, dag = tasks[gated]
    assert dag.startswith("comp-condition")
    condition = next(c for c in tasks.values() if c[1]["componentRef"]["name"] == dag)[1]
    assert "-gate'] == 'pass'" in condition["triggerPolicy"]["condition"]
    assert tasks[source][0] in condition["dependentTasks"]
    _, notify, where = tasks["alert"]
    assert where == "root" and notify["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"


def test_a_promote_stage_added_later_gets_the_gate():
    from components.registry import Stage

    stages = [Stage("a", "m:f"), Stage("evaluate", "m:f", upstream=("a",)),
              Stage("promote", "m:f", upstream=("a", "evaluate")), Stage("report", "m:f", upstream=("promote",))]
    assert gate_of(stages) == ("promote", "evaluate")
    assert gate_of(stages[:2]) == ("evaluate", "a")


@pytest.mark.parametrize("code, error, message", [(1, "RuntimeError", "failed"), (2, "RuntimeError", "bad data"),
                                                  (3, "GateNotPassed", "gate not passed")])
def test_component_maps_exit_codes(tmp_path, monkeypatch, code, error, message):
    import sys

    fake = tmp_path / "python"
    fake.write_text(f"#!/bin/sh\nexit {code}\n")
    fake.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(fake))
    with pytest.raises(Exception, match=message) as info:
        run_stage("validate", DATE, "daily", "", "[]", "ingest=abc", "job-1")
    assert type(info.value).__name__ == error


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Task .* have no effect in the current local runner")
def test_local_run(tmp_path, onerec_home):
    """The whole pipeline in kfp.local (lightweight components calling the same CLI), dsl.If and ExitHandler
    included. The debug world has no `blessed` metric yet, so the gate passes and every stage runs."""
    from kfp import local
    from mlflow import MlflowClient

    root = tmp_path / "kfp"
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root))
    build_pipeline("daily", mode="lightweight")(date=DATE, config_path=DEBUG)
    for s in stages_for("daily"):
        d = onerec_home / "artifacts" / "daily" / DATE / s.name
        assert (d / "_SUCCESS").is_file(), d
    # each task returned its stage's digest, and that is what the downstream stage consumed
    outputs = {p.parent.name: json.loads(p.read_text())["parameterValues"]
               for p in root.glob("onerec-daily-*/*/executor_output.json")}
    validate = json.loads((onerec_home / "artifacts" / "daily" / DATE / "validate" / "manifest.json").read_text())
    assert validate["input_digests"]["ingest"] == outputs["run-stage"]["digest"]
    assert outputs["run-stage"]["gate"] == "pass"
    assert outputs["notify"]["Output"] is False  # the exit handler ran; nothing to alert
    run = MlflowClient(f"sqlite:///{onerec_home / 'mlflow.db'}").get_run(validate["mlflow_run_id"])
    assert run.data.tags["onerec.orchestrator_run"].startswith("kfp:")


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_retried_tasks_carry_the_run_id_that_makes_a_bad_data_retry_fail_fast(pipeline):
    """KFP retries any failure; the contract fails a retry of exit 2/3 fast when the task passes its job id
    (tests/data/test_bad_input_catalogue.py runs that retry). Every retried task must pass it."""
    spec = yaml.safe_load((REPO / "pipelines" / f"onerec_{pipeline}.yaml").read_text())
    retried = {name: t for name, (_, t, _) in all_tasks(spec).items() if "retryPolicy" in t}
    assert retried
    for name, task in retried.items():
        assert set(task["retryPolicy"]) <= {"maxRetryCount", "backoffDuration", "backoffFactor", "backoffMaxDuration"}
        executor = spec["deploymentSpec"]["executors"][
            spec["components"][task["componentRef"]["name"]]["executorLabel"]]["container"]
        args = executor["args"]
        assert "--run-id" in args and "kfp:" in args[args.index("--run-id") + 1], name
        assert task["inputs"]["parameters"]["run_id"]["runtimeValue"]["constant"] == "{{$.pipeline_job_uuid}}", name
