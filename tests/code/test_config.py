"""One source of defaults: the config sections are the dataclasses' fields, read without importing torch."""
from __future__ import annotations

import ast
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from onerec import config

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("module, name", [("rl", "RLConfig"), ("train", "TrainConfig"),
                                          ("item.rqkmeans", "RQConfig"), ("item.fusion", "FusionConfig")])
def test_dataclass_defaults_read_from_source_equal_the_imported_class(module, name):
    import importlib

    obj = getattr(importlib.import_module(f"onerec.{module}"), name)()
    assert config.dataclass_defaults(module, name) == {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}


def test_sections_are_built_from_the_dataclasses():
    from onerec.item.fusion import FusionConfig
    from onerec.item.rqkmeans import RQConfig
    from onerec.rl import RLConfig
    from onerec.train import TrainConfig

    d = config.DEFAULTS
    assert {f.name for f in dataclasses.fields(RLConfig)} | {"train"} <= set(d["rl"])
    for stage in ("pretrain", "sft", "rl"):
        assert set(d[stage]["train"]) == {f.name for f in dataclasses.fields(TrainConfig)}
        TrainConfig(**d[stage]["train"])
    assert {f.name for f in dataclasses.fields(RQConfig)} - {"progress"} <= set(d["tokenize"])
    assert set(d["embed"]["fusion"]) == {f.name for f in dataclasses.fields(FusionConfig)} - {"progress"}
    for section, cls in (("registry", config.RegistryConfig), ("evaluate", config.EvaluateConfig),
                         ("online_validate", config.OnlineValidateConfig), ("promote", config.PromoteConfig)):
        assert d[section] == dataclasses.asdict(cls())


def test_config_module_stays_light():
    code = ("import json, sys\nimport onerec.config\n"
            "print(json.dumps(sorted(m for m in ('torch', 'faiss', 'numpy', 'pyarrow', 'mlflow') if m in sys.modules)))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []


def test_unknown_option_of_a_stage_section_is_bad_input():
    from types import SimpleNamespace

    from components.common import stage_config
    from onerec.errors import BadInput

    ctx = SimpleNamespace(section={"beam_size": 8, "beam": 8}, stage=SimpleNamespace(name="evaluate"))
    with pytest.raises(BadInput, match=r"unknown evaluate option\(s\) \['beam'\]"):
        stage_config(ctx, config.EvaluateConfig)
    ctx.section = {"beam_size": 8}
    assert stage_config(ctx, config.EvaluateConfig).beam_size == 8


def test_no_stage_imports_another_stage():
    """Stages share code through components/common.py, never through each other's modules."""
    from components.registry import STAGES

    stages = {s.entrypoint.split(":")[0] for s in STAGES}
    for module in sorted(stages):
        tree = ast.parse((REPO / (module.replace(".", "/") + ".py")).read_text())
        imported = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
                imported.update(f"{node.module}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                imported.update(a.name for a in node.names)
        assert not (imported & (stages - {module})), (module, sorted(imported & stages))
