# syntax=docker/dockerfile:1
# OneRec stage image (CPU): `docker build -f docker/cpu.Dockerfile --build-arg CODE_VERSION=$(git describe --always --dirty) -t onerec-cpu:0.1.0 .`
# Every stage runs as `onerec run <stage> --date D ...` (Airflow KubernetesPodOperator, Kubeflow container components).
FROM python:3.11.14-slim-bookworm AS build

ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY docker/requirements.py docker/requirements.py
# torch from the CPU index (the pinned version's CPU wheel; PyPI's default wheel pulls CUDA), then the
# package's own pins from pyproject.toml
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --index-url https://download.pytorch.org/whl/cpu "torch==2.13.0" \
 && python docker/requirements.py --extra kfp > /tmp/requirements.txt \
 && /opt/venv/bin/pip install -r /tmp/requirements.txt
COPY onerec onerec
COPY components components
RUN /opt/venv/bin/pip install --no-deps .

FROM python:3.11.14-slim-bookworm

# Java for Spark (features stage)
RUN apt-get update \
 && apt-get install -y --no-install-recommends openjdk-17-jre-headless=17.* \
 && rm -rf /var/lib/apt/lists/*

ARG CODE_VERSION=unknown
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    ONEREC_CODE_VERSION=$CODE_VERSION \
    ONEREC_HOME=/var/lib/onerec \
    ONEREC_REGISTRY_POLICY=/opt/onerec/mlflow/registry_policy.yaml \
    SPARK_LOCAL_IP=127.0.0.1 \
    MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false
LABEL org.opencontainers.image.title="onerec-cpu" \
      org.opencontainers.image.version=$CODE_VERSION \
      org.opencontainers.image.source="https://github.com/onerec/onerec"

COPY --from=build /opt/venv /opt/venv
COPY configs /opt/onerec/configs
COPY mlflow/registry_policy.yaml /opt/onerec/mlflow/registry_policy.yaml
RUN useradd --create-home --uid 10001 --user-group onerec \
 && mkdir -p /var/lib/onerec \
 && chown onerec:onerec /var/lib/onerec
USER 10001
WORKDIR /var/lib/onerec
ENTRYPOINT ["onerec"]
CMD ["stages"]
