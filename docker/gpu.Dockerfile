# syntax=docker/dockerfile:1
# OneRec stage image (GPU: CUDA torch, faiss-gpu): `docker build -f docker/gpu.Dockerfile --build-arg CODE_VERSION=$(git describe --always --dirty) -t onerec-gpu:0.1.0 .`
# Same package and pins as the CPU image (docker/requirements.py --gpu), with torch and faiss for CUDA 12.
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 AS base

ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# Python 3.11 (the project's version) from deadsnakes; Java 17 for Spark
RUN apt-get update \
 && apt-get install -y --no-install-recommends software-properties-common=0.99.* gpg-agent=2.4.* \
 && add-apt-repository -y ppa:deadsnakes/ppa \
 && apt-get update \
 && apt-get install -y --no-install-recommends python3.11=3.11.* python3.11-venv=3.11.* openjdk-17-jre-headless=17.* \
 && apt-get purge -y software-properties-common gpg-agent \
 && apt-get autoremove -y \
 && rm -rf /var/lib/apt/lists/*

FROM base AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY docker/requirements.py docker/requirements.py
RUN python3.11 -m venv /opt/venv \
 && /opt/venv/bin/pip install --index-url https://download.pytorch.org/whl/cu128 "torch==2.13.0" \
 && /opt/venv/bin/pip install "faiss-gpu-cu12==1.14.1.post1" \
 && python3.11 docker/requirements.py --gpu --extra kfp > /tmp/requirements.txt \
 && /opt/venv/bin/pip install -r /tmp/requirements.txt
COPY onerec onerec
COPY components components
# --no-deps: torch and faiss are the CUDA builds above (pip would otherwise add faiss-cpu next to faiss-gpu)
RUN /opt/venv/bin/pip install --no-deps .

FROM base
ARG CODE_VERSION=unknown
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    ONEREC_CODE_VERSION=$CODE_VERSION \
    ONEREC_HOME=/var/lib/onerec \
    ONEREC_REGISTRY_POLICY=/opt/onerec/mlflow/registry_policy.yaml \
    SPARK_LOCAL_IP=127.0.0.1 \
    MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
LABEL org.opencontainers.image.title="onerec-gpu" \
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
