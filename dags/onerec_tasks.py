"""The tasks of the Airflow DAGs in dags/onerec_daily.py (kept out of the DAG file so that it reads as a DAG).

Two task modes, one definition, chosen by ONEREC_TASK_MODE:
  local       (default) each task runs the stage contract as a subprocess of the worker,
              `python -m components.cli run <stage> --date D [--config F] [--set k=v ...]`;
  kubernetes  each task is a KubernetesPodOperator running the stage image (ENTRYPOINT ["onerec"],
              args `run <stage> --date D ...`) with the stage's CPU/memory/GPU requests from the registry.
              ONEREC_IMAGE / ONEREC_GPU_IMAGE name the images (GPU stages get the GPU image),
              ONEREC_K8S_NAMESPACE the namespace, ONEREC_K8S_CONFIG the config path inside the pod
              (default /etc/onerec/onerec.yaml, mounted from the ConfigMap `onerec-config`); the pod's
              environment comes from the ConfigMap `onerec-env` and the Secret `onerec-env` (S3, MLflow).
Exit codes (onerec.errors) map to Airflow states in both modes: 0 success; 2 (bad data / bad request) fails
without retry; 3 (gate not passed) skips the task and, through the default trigger rule, everything
downstream; anything else is retried with exponential backoff.

Partition date D, first match wins:
  1. params.date (trigger form, `dag.test(run_conf={"date": ...})`, `airflow dags trigger -c`);
  2. the run's logical date (= the data interval start for scheduled runs: a run for day D fires
     at midnight after D), or its data interval start;
  3. neither (an Airflow 3 manual run without logical date): the task fails, asking for params.date.

Import-light like the DAG file: the registry and airflow.sdk only; the Kubernetes provider loads in kubernetes
mode, torch and mlflow only in the stage subprocess. dags/.airflowignore keeps the DAG processor from parsing it.
"""
from __future__ import annotations

import datetime as dt
import logging
import os
import signal
import sys
from pathlib import Path

from airflow.sdk import get_current_context, task

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # DAGS_FOLDER is <repo>/dags; the registry lives in <repo>/components
    sys.path.insert(0, str(REPO))

from components.registry import GPU_IMAGE, IMAGE, Stage, stages_until  # noqa: E402
from onerec.errors import EXIT_BAD_INPUT, EXIT_GATE, EXIT_OK  # noqa: E402
from onerec.errors import BadInput  # noqa: E402

log = logging.getLogger("onerec.dags")

TASK_MODES = ("local", "kubernetes")
K8S_CONFIG = "/etc/onerec/onerec.yaml"   # the ConfigMap `onerec-config` mounted into every stage pod
DEADLINE_HOURS = {"daily": 12.0, "bootstrap": 48.0}


def partition_date(context) -> str:
    """The YYYY-MM-DD partition this run processes (see the module docstring)."""
    if date := (context.get("params") or {}).get("date"):
        return str(date)
    when = context.get("logical_date") or context.get("data_interval_start")
    if when is None:
        from airflow.sdk.exceptions import AirflowFailException

        raise AirflowFailException(
            "this run has no logical date, so the partition date is unknown: "
            "trigger it with params.date=YYYY-MM-DD (conf {\"date\": \"2026-01-02\"})")
    return when.date().isoformat()


def config_args(params: dict, pipeline: str, default_config: str | None = None) -> list[str]:
    """--config / --set passthrough; the DAG's own pipeline always wins."""
    args = []
    if config := params.get("config") or default_config or os.environ.get("ONEREC_CONFIG"):
        args += ["--config", str(config)]
    for item in [*(params.get("set") or []), f"pipeline={pipeline}"]:
        args += ["--set", str(item)]
    return args


def notify_failure(context) -> None:
    """on_failure_callback: calls ONEREC_FAILURE_NOTIFIER="module:function" (gets the context),
    else logs one error line an alerting rule can match."""
    if target := os.environ.get("ONEREC_FAILURE_NOTIFIER"):
        import importlib

        module, _, fn = target.partition(":")
        getattr(importlib.import_module(module), fn)(context)
        return
    ti = context.get("ti") or context.get("task_instance")
    try:
        date = partition_date(context)
    except Exception:
        date = "?"
    log.error("onerec stage failed: dag=%s task=%s date=%s try=%s", getattr(ti, "dag_id", "?"),
              getattr(ti, "task_id", "?"), date, getattr(ti, "try_number", "?"))


def skip_beyond_until(stage: str, pipeline: str, params: dict) -> None:
    """params.until=<stage>: the stages after it in registry order skip (and so does their downstream)."""
    if not (until := (params or {}).get("until")):
        return
    from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

    try:
        names = [s.name for s in stages_until(pipeline, until)]
    except BadInput as e:
        raise AirflowFailException(f"params.until: {e}") from None
    if stage not in names:
        raise AirflowSkipException(f"{stage}: after params.until={until}, not run")


def orchestrator_run_id(context) -> str:
    """Recorded on the stage's MLflow run (tag onerec.orchestrator_run): MLflow lineage -> DAG run."""
    ti = context.get("ti") or context.get("task_instance")
    dag_id = getattr(ti, "dag_id", None) or getattr(context.get("dag"), "dag_id", "?")
    run_id = context.get("run_id") or getattr(context.get("dag_run"), "run_id", "?")
    return f"airflow:{dag_id}/{run_id}"


def run_stage(stage: str, date: str, args: list[str], run_id: str = "") -> None:
    """Run one stage as a subprocess, stream its output into the task log, map its exit code."""
    import subprocess

    from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

    cmd = [sys.executable, "-m", "components.cli", "run", stage, "--date", date, *args]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "PYTHONUNBUFFERED": "1"}
    if run_id:
        env["ONEREC_RUN_ID"] = run_id
    log.info("running %s", " ".join(cmd))
    last = ""
    # own session: on timeout or kill, the whole stage goes (Spark's JVM, torchrun workers) too
    with subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, bufsize=1, start_new_session=True) as proc:
        try:
            for line in proc.stdout:
                log.info("%s", line.rstrip())
                last = line.strip() or last
            code = proc.wait()
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    if code == EXIT_BAD_INPUT:
        raise AirflowFailException(f"{stage} {date}: bad data or request, not retried: {last}")
    if code == EXIT_GATE:
        raise AirflowSkipException(f"{stage} {date}: gate not passed, downstream skipped: {last}")
    if code != EXIT_OK:
        raise RuntimeError(f"{stage} {date} exited with {code} (retryable): {last}")


def task_mode(mode: str | None = None) -> str:
    mode = mode or os.environ.get("ONEREC_TASK_MODE", "local")
    if mode not in TASK_MODES:
        raise ValueError(f"ONEREC_TASK_MODE={mode!r}: expected one of {', '.join(TASK_MODES)}")
    return mode


def task_defaults(stage: Stage) -> dict:
    """What every task gets in both modes: retries with backoff, a timeout, the failure notifier."""
    return dict(task_id=stage.name, retries=stage.retries, retry_delay=dt.timedelta(minutes=1),
                retry_exponential_backoff=2.0, max_retry_delay=dt.timedelta(minutes=30),
                execution_timeout=dt.timedelta(seconds=stage.timeout_s), on_failure_callback=notify_failure,
                doc_md=stage.description,
                # one GPU training job per stage at a time, whatever max_active_runs says
                max_active_tis_per_dag=1 if stage.resources.get("gpu") else None)


def local_task(stage: Stage, pipeline: str):
    @task(**task_defaults(stage))
    def _run() -> None:
        context = get_current_context()
        skip_beyond_until(stage.name, pipeline, context["params"])
        run_stage(stage.name, partition_date(context), config_args(context["params"], pipeline),
                  orchestrator_run_id(context))

    return _run()


def container_resources(stage: Stage):
    """Requests from the registry; memory and GPUs are also limits (a pod over its memory is OOM-killed,
    not left to starve its neighbours; GPUs cannot be overcommitted)."""
    from kubernetes.client import models as k8s

    r = stage.resources
    requests = {"cpu": str(r["cpu"]), "memory": str(r["memory"])}
    limits = {"memory": str(r["memory"])}
    if r.get("gpu"):
        requests["nvidia.com/gpu"] = limits["nvidia.com/gpu"] = str(r["gpu"])
    return k8s.V1ResourceRequirements(requests=requests, limits=limits)


_POD_OPERATOR = None


def pod_operator_class():
    """KubernetesPodOperator that resolves the partition date and params at run time (Airflow 3 manual runs
    may have no logical date, which a Jinja template cannot ask for) and maps exit 2 to no-retry failure.
    Imported lazily: the provider is heavy, and local mode never needs it."""
    global _POD_OPERATOR
    if _POD_OPERATOR is not None:
        return _POD_OPERATOR
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

    class OneRecPodOperator(KubernetesPodOperator):
        def __init__(self, *, stage: str, pipeline: str, **kwargs):
            super().__init__(**kwargs)
            self.stage, self.pipeline = stage, pipeline

        def stage_arguments(self, context) -> list[str]:
            params = context.get("params") or {}
            return ["run", self.stage, "--date", partition_date(context),
                    *config_args(params, self.pipeline, os.environ.get("ONEREC_K8S_CONFIG", K8S_CONFIG))]

        def execute(self, context):
            from kubernetes.client import models as k8s

            skip_beyond_until(self.stage, self.pipeline, context.get("params") or {})
            self.arguments = self.stage_arguments(context)
            self.env_vars = [*(self.env_vars or []),
                             k8s.V1EnvVar(name="ONEREC_RUN_ID", value=orchestrator_run_id(context))]
            return super().execute(context)

        def cleanup(self, pod, remote_pod):
            try:
                return super().cleanup(pod, remote_pod)
            except Exception as e:
                if type(e).__name__ == "AirflowSkipException" or pod_exit_code(remote_pod, self.base_container_name) != EXIT_BAD_INPUT:
                    raise
                from airflow.sdk.exceptions import AirflowFailException

                raise AirflowFailException(f"{self.stage}: bad data or request (exit 2), not retried: {e}") from e

    OneRecPodOperator.__module__ = __name__
    _POD_OPERATOR = OneRecPodOperator
    return OneRecPodOperator


def pod_exit_code(remote_pod, container: str = "base"):
    statuses = (getattr(getattr(remote_pod, "status", None), "container_statuses", None) or [])
    for st in statuses:
        if st.name == container and st.state and st.state.terminated:
            return st.state.terminated.exit_code
    return None


def kubernetes_task(stage: Stage, pipeline: str):
    from kubernetes.client import models as k8s

    gpu = bool(stage.resources.get("gpu"))
    image = os.environ.get("ONEREC_GPU_IMAGE", GPU_IMAGE) if gpu else os.environ.get("ONEREC_IMAGE", IMAGE)
    config_volume = k8s.V1Volume(name="onerec-config",
                                 config_map=k8s.V1ConfigMapVolumeSource(name="onerec-config", optional=True))
    return pod_operator_class()(
        stage=stage.name, pipeline=pipeline, **task_defaults(stage),
        name=f"onerec-{pipeline}-{stage.name}".replace("_", "-"),
        namespace=os.environ.get("ONEREC_K8S_NAMESPACE", "onerec"),
        image=image,
        # ENTRYPOINT ["onerec"]; the date and params are filled in at run time (stage_arguments), not by a
        # template: a manual Airflow 3 run may have no logical date to render
        arguments=["run", stage.name, "--date", "PARTITION_DATE"],
        container_resources=container_resources(stage),
        env_from=[k8s.V1EnvFromSource(config_map_ref=k8s.V1ConfigMapEnvSource(name="onerec-env", optional=True)),
                  k8s.V1EnvFromSource(secret_ref=k8s.V1SecretEnvSource(name="onerec-env", optional=True))],
        volumes=[config_volume],
        volume_mounts=[k8s.V1VolumeMount(name="onerec-config", mount_path=str(Path(K8S_CONFIG).parent),
                                         read_only=True)],
        labels={"app.kubernetes.io/name": "onerec", "onerec/stage": stage.name, "onerec/pipeline": pipeline},
        service_account_name=os.environ.get("ONEREC_K8S_SERVICE_ACCOUNT", "onerec-stage"),
        tolerations=[k8s.V1Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")] if gpu else None,
        active_deadline_seconds=stage.timeout_s,
        skip_on_exit_code=EXIT_GATE,         # gate not passed: skipped, and so is everything downstream
        get_logs=True,
        on_finish_action="delete_succeeded_pod",   # failed pods stay for the on-call engineer
        reattach_on_restart=True,
        startup_timeout_seconds=600,
    )


def deadline_alert(dag_id: str, pipeline: str):
    """The run must finish within N hours of being queued (not of its logical date: a backfill of old
    dates would otherwise miss its deadline at once). The callback runs in the triggerer."""
    from airflow.sdk.definitions.callback import AsyncCallback
    from airflow.sdk.definitions.deadline import DeadlineAlert, DeadlineReference

    hours = float(os.environ.get("ONEREC_DEADLINE_HOURS", DEADLINE_HOURS.get(pipeline, 12.0)))
    if hours <= 0:  # ONEREC_DEADLINE_HOURS=0: no deadline (dag.test() in Airflow 3.3.2 fails on finishing a
        return None  # run that has one: DagRun.update_state looks the alerts up by id, dag.test holds dicts)
    return DeadlineAlert(reference=DeadlineReference.DAGRUN_QUEUED_AT, interval=dt.timedelta(hours=hours),
                         callback=AsyncCallback("components.alerts.deadline_missed",
                                                kwargs={"dag_id": dag_id, "pipeline": pipeline, "hours": hours}),
                         name=f"{dag_id} finished within {hours:g}h")
