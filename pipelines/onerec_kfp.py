"""Kubeflow Pipelines (v2) generated from the stage registry; `python -m pipelines.onerec_kfp`
recompiles `pipelines/onerec_daily.yaml` and `pipelines/onerec_bootstrap.yaml`.

Each task is one lightweight component, `run_stage`, calling the stage contract
(`python -m components.cli run <stage> --date D ...`, the same entrypoint Airflow runs). It returns
the stage's output digest, which is the next task's `upstream_digest` input: that orders the tasks
and keys KFP's cache on the actual upstream outputs. Root stages (no upstream) are never cached:
their inputs live outside the pipeline; the stage contract already makes an unchanged rerun a no-op.

KFP has no "skip downstream" state: exit 3 (gate not passed) fails the task with `GateNotPassed`,
which stops everything downstream of it. Retries (per-stage `set_retry`) apply to any failure.
"""
# No `from __future__ import annotations`: KFP reads the component's annotations as real types.
import argparse
import os
import sys
from pathlib import Path

from kfp import compiler, dsl

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from components.registry import stages_for  # noqa: E402

DEFAULT_IMAGE = "python:3.11-slim"  # what the checked-in YAML uses
BASE_IMAGE = os.environ.get("ONEREC_KFP_IMAGE", DEFAULT_IMAGE)  # production: the onerec stage image
PIPELINES = ("daily", "bootstrap")


def run_stage(stage: str, date: str, pipeline: str, config_path: str, overrides: list,
              upstream_digest: str) -> str:
    """Run one stage for one date through the stage contract and return its output digest."""
    import subprocess
    import sys

    class GateNotPassed(RuntimeError):
        """Exit 3: a quality gate said no; nothing downstream may run."""

    sets = [*overrides, f"pipeline={pipeline}"]
    cmd = [sys.executable, "-m", "components.cli", "run", stage, "--date", date]
    cmd += ["--config", config_path] if config_path else []
    cmd += [arg for kv in sets for arg in ("--set", kv)]
    print(f"upstream digests: {upstream_digest or '-'}\n$ {' '.join(cmd)}", flush=True)
    code = subprocess.run(cmd).returncode
    if code == 3:
        raise GateNotPassed(f"{stage} {date}: gate not passed (exit 3); downstream does not run")
    if code != 0:
        kind = "bad data or request" if code == 2 else "failed"
        raise RuntimeError(f"{stage} {date}: {kind} (exit {code})")

    from onerec.config import load_config, resolved
    from onerec.store import StageDir, open_store

    cfg = resolved(load_config(config_path or None, sets))
    return StageDir(open_store(cfg["store"]["root"]), pipeline, date, stage).digest()


def build_pipeline(pipeline: str, base_image: str = BASE_IMAGE):
    """The KFP pipeline for one registry pipeline: one task per stage, wired by `upstream`."""
    op = dsl.component(base_image=base_image)(run_stage)
    stages = stages_for(pipeline)

    @dsl.pipeline(name=f"onerec-{pipeline}",
                  description=f"OneRec {pipeline}: " + " -> ".join(s.name for s in stages))
    def onerec_pipeline(date: str, config_path: str = "", overrides: list = []):  # noqa: B006 (KFP default)
        tasks = {}
        for s in stages:
            # several upstreams: one string holding all their digests, so all of them key the cache
            digest = ",".join(f"{up}={tasks[up].output}" for up in s.upstream if up in tasks)
            t = op(stage=s.name, date=date, pipeline=pipeline, config_path=config_path,
                   overrides=overrides, upstream_digest=digest)
            t.set_display_name(s.name).set_caching_options(enable_caching=bool(s.upstream))
            t.set_cpu_limit(s.resources["cpu"]).set_memory_limit(s.resources["memory"])
            if s.retries:
                t.set_retry(num_retries=s.retries, backoff_duration="60s", backoff_factor=2.0)
            tasks[s.name] = t

    return onerec_pipeline


def compile_pipeline(pipeline: str, path: str | os.PathLike, base_image: str = BASE_IMAGE) -> Path:
    compiler.Compiler().compile(build_pipeline(pipeline, base_image), str(path))
    return Path(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="compile the OneRec Kubeflow pipelines")
    parser.add_argument("--out-dir", default=str(Path(__file__).parent))
    parser.add_argument("--image", default=BASE_IMAGE, help="base image of the stage component")
    args = parser.parse_args(argv)
    for p in PIPELINES:
        print(compile_pipeline(p, Path(args.out_dir) / f"onerec_{p}.yaml", args.image))
    return 0


if __name__ == "__main__":
    sys.exit(main())
