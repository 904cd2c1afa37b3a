# syntax=docker/dockerfile:1
# Airflow 3 for the OneRec DAGs: the CPU stage image plus the `airflow` extra of pyproject.toml (Airflow,
# the cncf-kubernetes and postgres providers, psycopg2). Used by infra/compose.yaml (Airflow services and
# the MLflow server, which needs psycopg2) and by the Helm values (infra/helm/airflow-values.yaml).
#   docker build -f docker/airflow.Dockerfile --build-arg BASE=onerec-cpu:0.1.0 -t onerec-airflow:0.1.0 .
ARG BASE=onerec-cpu:0.1.0
FROM ${BASE}

USER 0
COPY pyproject.toml /tmp/onerec/pyproject.toml
COPY docker/requirements.py /tmp/onerec/docker/requirements.py
RUN python /tmp/onerec/docker/requirements.py --pyproject /tmp/onerec/pyproject.toml --extra airflow > /tmp/requirements.txt \
 && pip install --no-cache-dir -r /tmp/requirements.txt \
 && rm -rf /tmp/onerec /tmp/requirements.txt
COPY dags /opt/onerec/dags
ENV AIRFLOW_HOME=/opt/airflow \
    AIRFLOW__CORE__DAGS_FOLDER=/opt/onerec/dags \
    AIRFLOW__CORE__LOAD_EXAMPLES=False
RUN mkdir -p /opt/airflow && chown 10001:10001 /opt/airflow
USER 10001
ENTRYPOINT ["airflow"]
CMD ["version"]
