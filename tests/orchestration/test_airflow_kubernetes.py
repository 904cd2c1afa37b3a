"""The Airflow DAGs in kubernetes task mode, built without a cluster: one KubernetesPodOperator per stage
with the stage image, `onerec run <stage>` args, the registry's resources, and the exit-code mapping."""
from __future__ import annotations

import datetime as dt
import importlib.util
from pathlib import Path
from types import SimpleNamespace

import pytest

from components.registry import stages_for

REPO = Path(__file__).resolve().parents[2]
DAG_FILE = REPO / "dags" / "onerec_daily.py"

pytestmark = pytest.mark.orchestration


@pytest.fixture(scope="module")
def dags_module():
    spec = importlib.util.spec_from_file_location("onerec_dag_k8s_under_test", DAG_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def k8s_env(monkeypatch):
    monkeypatch.setenv("ONEREC_IMAGE", "registry.example/onerec-cpu:1.2.3")
    monkeypatch.setenv("ONEREC_GPU_IMAGE", "registry.example/onerec-gpu:1.2.3")
    monkeypatch.setenv("ONEREC_K8S_NAMESPACE", "recsys")


@pytest.mark.parametrize("pipeline", ["daily", "bootstrap"])
def test_kubernetes_mode_builds_pod_operators_from_the_registry(dags_module, k8s_env, pipeline):
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

    dag = dags_module.build_dag(f"k8s_{pipeline}", pipeline, None, mode="kubernetes")
    stages = stages_for(pipeline)
    assert sorted(dag.task_ids) == sorted(s.name for s in stages)
    assert "kubernetes" in dag.tags
    for s in stages:
        op = dag.get_task(s.name)
        assert isinstance(op, KubernetesPodOperator)
        assert op.upstream_task_ids == set(s.upstream)
        gpu = s.resources.get("gpu")
        assert op.image == f"registry.example/onerec-{'gpu' if gpu else 'cpu'}:1.2.3"
        assert op.namespace == "recsys"
        assert not op.cmds  # the image's ENTRYPOINT ["onerec"]
        assert op.arguments[:2] == ["run", s.name]
        res = op.container_resources
        assert res.requests["cpu"] == str(s.resources["cpu"]) and res.requests["memory"] == s.resources["memory"]
        assert res.limits["memory"] == s.resources["memory"]
        if gpu:
            assert res.requests["nvidia.com/gpu"] == res.limits["nvidia.com/gpu"] == str(gpu)
            assert [t.key for t in op.tolerations] == ["nvidia.com/gpu"]
            assert op.max_active_tis_per_dag == 1
        else:
            assert "nvidia.com/gpu" not in res.limits
        assert op.retries == s.retries and op.retry_exponential_backoff == 2.0
        assert op.execution_timeout == dt.timedelta(seconds=s.timeout_s)
        assert op.active_deadline_seconds == s.timeout_s
        assert op.on_failure_callback
        assert list(op.skip_on_exit_code) == [3]  # gate not passed -> skipped downstream
        assert op.labels["onerec/stage"] == s.name
        assert [e.config_map_ref.name for e in op.env_from if e.config_map_ref] == ["onerec-env"]
        assert [m.mount_path for m in op.volume_mounts] == ["/etc/onerec"]


def test_pod_args_resolve_the_date_and_params_at_run_time(dags_module, k8s_env):
    dag = dags_module.build_dag("k8s_args", "daily", None, mode="kubernetes")
    op = dag.get_task("validate")
    # Airflow 3 manual run: no logical date, the date comes from params
    ctx = {"params": {"date": "2026-01-05", "config": None, "set": ["data.options.seed=3"]}, "logical_date": None}
    assert op.stage_arguments(ctx) == ["run", "validate", "--date", "2026-01-05", "--config", "/etc/onerec/onerec.yaml",
                                       "--set", "data.options.seed=3", "--set", "pipeline=daily"]
    scheduled = {"params": {"date": None, "config": "/etc/onerec/small.yaml"},
                 "logical_date": dt.datetime(2026, 1, 2, tzinfo=dt.timezone.utc)}
    assert op.stage_arguments(scheduled) == ["run", "validate", "--date", "2026-01-02", "--config",
                                             "/etc/onerec/small.yaml", "--set", "pipeline=daily"]


def _pod(code: int):
    terminated = SimpleNamespace(exit_code=code)
    status = SimpleNamespace(name="base", state=SimpleNamespace(terminated=terminated))
    return SimpleNamespace(status=SimpleNamespace(container_statuses=[status], phase="Failed"),
                           metadata=SimpleNamespace(name="p"))


@pytest.mark.parametrize("code, error", [(1, "AirflowException"), (2, "AirflowFailException"),
                                         (3, "AirflowSkipException")])
def test_pod_exit_codes_map_to_task_states(dags_module, k8s_env, monkeypatch, code, error):
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

    op = dags_module.build_dag("k8s_codes", "daily", None, mode="kubernetes").get_task("ingest")
    assert dags_module.pod_exit_code(_pod(code)) == code

    def base_cleanup(self, pod, remote_pod):  # what the provider raises, without a cluster to ask
        from airflow.exceptions import AirflowException, AirflowSkipException

        if pod_code := dags_module.pod_exit_code(remote_pod):
            if pod_code in self.skip_on_exit_code:
                raise AirflowSkipException(f"exit {pod_code}")
            raise AirflowException(f"Pod returned a failure (exit {pod_code})")

    monkeypatch.setattr(KubernetesPodOperator, "cleanup", base_cleanup)
    with pytest.raises(Exception) as info:
        op.cleanup(_pod(code).metadata, _pod(code))
    assert type(info.value).__name__ == error


def test_until_skips_later_stages(dags_module):
    from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

    dags_module.skip_beyond_until("validate", "daily", {"until": "validate"})
    dags_module.skip_beyond_until("features", "daily", {"until": None})
    with pytest.raises(AirflowSkipException):
        dags_module.skip_beyond_until("features", "daily", {"until": "validate"})
    with pytest.raises(AirflowFailException):
        dags_module.skip_beyond_until("features", "daily", {"until": "nope"})


def test_unknown_task_mode_is_refused(dags_module):
    with pytest.raises(ValueError, match="ONEREC_TASK_MODE"):
        dags_module.build_dag("bad", "daily", None, mode="docker")


def test_deadline_alert_uses_the_pluggable_notifier(monkeypatch):
    import asyncio

    from components import alerts

    seen = []
    monkeypatch.setattr(alerts, "notifier", lambda: seen.append)
    asyncio.run(alerts.deadline_missed(context={"dag_run": {"run_id": "r1"}}, dag_id="onerec_daily", hours=12))
    assert seen == [{"event": "deadline_missed", "run_id": "r1", "dag_id": "onerec_daily", "hours": 12}]
    assert alerts.pipeline_finished("daily", "2026-01-02", "FAILED", "boom") and seen[-1]["event"] == "pipeline_failed"
    assert not alerts.pipeline_finished("daily", "2026-01-02", "SUCCEEDED")
