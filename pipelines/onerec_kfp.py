"""Kubeflow Pipelines (v2) generated from the stage registry; `python -m pipelines.onerec_kfp`
recompiles `pipelines/onerec_daily.yaml` and `pipelines/onerec_bootstrap.yaml`.

Two component modes, one pipeline definition:
  container    (the compiled YAML, production) each stage is a container component running the stage
               image, ENTRYPOINT ["onerec"], args `run <stage> --date D ... --digest-file --gate-file`;
               stages with a GPU in the registry run the GPU image and ask for an accelerator.
  lightweight  (`kfp.local.SubprocessRunner`, a laptop) the same CLI call from a Python component.

Each task outputs its stage's output digest, which is the next task's `upstream_digest` input: that
orders the tasks and keys KFP's cache on the actual upstream outputs (plus date, config and overrides).
Root stages (no upstream) are never cached: their inputs live outside the pipeline; the stage contract
already makes an unchanged rerun a no-op. Each task also outputs `gate`: `blocked` when its metrics say
`blessed: false`, else `pass`. The promotion stage (`promote` when registered, else the pipeline's last
stage) and everything after it run inside `dsl.If(<previous stage>.gate == "pass")`, so a `promote`
stage added to the registry later is gated without edits here. An ExitHandler alerts through
`components.alerts` (ONEREC_FAILURE_NOTIFIER) when the run does not succeed.

KFP has no "skip downstream" state: exit 3 (gate not passed) fails the task, which stops everything
downstream of it. Retries (per-stage `set_retry`) apply to any failure: KFP's RetryPolicy has only a count and
a backoff, no condition on the exit code. So a retry of exit 2 (bad data) or 3 (gate) fails fast instead: the
stage contract records such a failure under the task's `--run-id kfp:<job id>`, and a retry with the same inputs
and config exits with the same code at once, doing nothing (components/contract.py, docs/orchestration.md).
"""
# No `from __future__ import annotations`: KFP reads the component's annotations as real types.
import argparse
import os
import sys
from pathlib import Path
from typing import NamedTuple

from kfp import compiler, dsl

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from components.registry import GPU_IMAGE as DEFAULT_GPU_IMAGE  # noqa: E402  (what the checked-in YAML uses)
from components.registry import IMAGE as DEFAULT_IMAGE  # noqa: E402
from components.registry import Stage, stages_for  # noqa: E402
BASE_IMAGE = os.environ.get("ONEREC_IMAGE", DEFAULT_IMAGE)
GPU_IMAGE = os.environ.get("ONEREC_GPU_IMAGE", DEFAULT_GPU_IMAGE)
ACCELERATOR = "nvidia.com/gpu"
PIPELINES = ("daily", "bootstrap")
MODES = ("container", "lightweight")
PROMOTE = "promote"


def run_stage(stage: str, date: str, pipeline: str, config_path: str, overrides: str, upstream_digest: str,
              run_id: str) -> NamedTuple("Outputs", [("digest", str), ("gate", str)]):
    """Lightweight mode: run one stage through the stage contract; return its output digest and gate."""
    import subprocess
    import sys
    import tempfile
    from collections import namedtuple
    from pathlib import Path

    from onerec.errors import EXIT_BAD_INPUT, EXIT_GATE, EXIT_OK   # imported here: KFP ships this function's body

    class GateNotPassed(RuntimeError):
        """Exit 3: a quality gate said no; nothing downstream may run."""

    out = Path(tempfile.mkdtemp(prefix="onerec-kfp-"))
    cmd = [sys.executable, "-m", "components.cli", "run", stage, "--date", date]
    cmd += ["--config", config_path] if config_path else []
    cmd += ["--set-json", overrides or "[]", "--set", f"pipeline={pipeline}", "--run-id", f"kfp:{run_id}",
            "--upstream-digests", upstream_digest,
            "--digest-file", str(out / "digest"), "--gate-file", str(out / "gate")]
    print(f"upstream digests: {upstream_digest or '-'}\n$ {' '.join(cmd)}", flush=True)
    code = subprocess.run(cmd).returncode
    if code == EXIT_GATE:
        raise GateNotPassed(f"{stage} {date}: gate not passed (exit 3); downstream does not run")
    if code != EXIT_OK:
        kind = "bad data or request" if code == EXIT_BAD_INPUT else "failed"
        raise RuntimeError(f"{stage} {date}: {kind} (exit {code})")
    return namedtuple("Outputs", ["digest", "gate"])((out / "digest").read_text(), (out / "gate").read_text())


def notify(pipeline: str, date: str, status: dsl.PipelineTaskFinalStatus) -> bool:
    """Exit handler: alert through components.alerts unless the run succeeded."""
    from components.alerts import pipeline_finished

    return pipeline_finished(pipeline, date, status.state, status.error_message or "", status.pipeline_job_resource_name)


def gate_value(gate: str) -> str:
    """Lightweight mode only: kfp.local resolves a dsl.If condition on a task's single `Output`, not on a
    named output, so the decider's `gate` passes through this one-line task. Container mode (the real
    backend) conditions on the stage's `gate` output directly."""
    return gate


def container_op(image: str):
    """The stage image as a container component (ENTRYPOINT ["onerec"])."""
    @dsl.container_component
    def onerec_stage(stage: str, date: str, pipeline: str, config_path: str, overrides: str, upstream_digest: str,
                     run_id: str, digest: dsl.OutputPath(str), gate: dsl.OutputPath(str)):
        return dsl.ContainerSpec(
            image=image, command=["onerec"],
            args=["run", stage, "--date", date, "--config", config_path, "--set-json", overrides,
                  "--set", dsl.ConcatPlaceholder(["pipeline=", pipeline]), "--run-id", dsl.ConcatPlaceholder(["kfp:", run_id]),
                  "--upstream-digests", upstream_digest, "--digest-file", digest, "--gate-file", gate])

    return onerec_stage


def gate_of(stages: list[Stage]) -> tuple[str | None, str | None]:
    """(gated stage, stage whose `gate` output decides): `promote` if registered, else the last stage;
    the decider is the gated stage's upstream that comes last in registry order."""
    names = [s.name for s in stages]
    if len(names) < 2:
        return None, None
    gated = PROMOTE if PROMOTE in names else names[-1]
    ups = [u for u in next(s for s in stages if s.name == gated).upstream if u in names]
    source = max(ups, key=names.index) if ups else names[names.index(gated) - 1]
    return gated, source


def build_pipeline(pipeline: str, mode: str = "lightweight", image: str = BASE_IMAGE, gpu_image: str = GPU_IMAGE):
    """The KFP pipeline for one registry pipeline: one task per stage, wired by `upstream`."""
    if mode not in MODES:
        raise ValueError(f"mode {mode!r}: expected one of {', '.join(MODES)}")
    stages = stages_for(pipeline)
    gated, source = gate_of(stages)
    gated_index = [s.name for s in stages].index(gated) if gated else len(stages)
    if mode == "container":
        ops = {False: container_op(image), True: container_op(gpu_image)}
    else:
        light = dsl.component(base_image=image, install_kfp_package=False)(run_stage)
        ops = {False: light, True: light}
    # the stage images carry the kfp extra (docker/*.Dockerfile): no pip install at run time, no network needed
    alert = dsl.component(base_image=image, install_kfp_package=False)(notify)

    def add(s: Stage, tasks: dict, date, config_path, overrides):
        # several upstreams: one string holding all their digests, so all of them key the cache
        digest = ",".join(f"{up}={tasks[up].outputs['digest']}" for up in s.upstream if up in tasks)
        gpu = s.resources.get("gpu")
        t = ops[bool(gpu)](stage=s.name, date=date, pipeline=pipeline, config_path=config_path,
                           overrides=overrides, upstream_digest=digest, run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER)
        t.set_display_name(s.name).set_caching_options(enable_caching=bool(s.upstream))
        t.set_cpu_request(str(s.resources["cpu"])).set_memory_request(s.resources["memory"])
        t.set_memory_limit(s.resources["memory"])
        if gpu:
            t.set_accelerator_type(ACCELERATOR).set_accelerator_limit(str(gpu))
        if s.retries:
            t.set_retry(num_retries=s.retries, backoff_duration="60s", backoff_factor=2.0, backoff_max_duration="1800s")
        tasks[s.name] = t

    @dsl.pipeline(name=f"onerec-{pipeline}",
                  description=f"OneRec {pipeline} ({mode} components): " + " -> ".join(s.name for s in stages))
    def onerec_pipeline(date: str, config_path: str = "", overrides: str = "[]"):
        exit_task = alert(pipeline=pipeline, date=date)
        exit_task.set_display_name("alert").set_caching_options(enable_caching=False)
        with dsl.ExitHandler(exit_task, name="onerec-stages"):
            tasks = {}
            for s in stages[:gated_index]:
                add(s, tasks, date, config_path, overrides)
            if gated:
                decision = tasks[source].outputs["gate"]
                if mode == "lightweight":
                    check = dsl.component(base_image=image, install_kfp_package=False)(gate_value)(gate=decision)
                    decision = check.set_display_name(f"{source}-gate").set_caching_options(enable_caching=False).output
                with dsl.If(decision == "pass", name=f"{source}-blessed"):
                    for s in stages[gated_index:]:
                        add(s, tasks, date, config_path, overrides)

    return onerec_pipeline


def compile_pipeline(pipeline: str, path: str | os.PathLike, image: str = BASE_IMAGE, gpu_image: str = GPU_IMAGE,
                     mode: str = "container") -> Path:
    compiler.Compiler().compile(build_pipeline(pipeline, mode, image, gpu_image), str(path))
    return Path(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="compile the OneRec Kubeflow pipelines")
    parser.add_argument("--out-dir", default=str(Path(__file__).parent))
    parser.add_argument("--image", default=DEFAULT_IMAGE, help="the CPU stage image")
    parser.add_argument("--gpu-image", default=DEFAULT_GPU_IMAGE, help="the GPU stage image")
    parser.add_argument("--mode", default="container", choices=MODES)
    args = parser.parse_args(argv)
    for p in PIPELINES:
        print(compile_pipeline(p, Path(args.out_dir) / f"onerec_{p}.yaml", args.image, args.gpu_image, args.mode))
    return 0


if __name__ == "__main__":
    sys.exit(main())
