-- One server, two databases: Airflow's metadata and MLflow's backend store (local stack only;
-- the password comes from POSTGRES_PASSWORD in compose and is the same for both roles here).
CREATE ROLE airflow LOGIN PASSWORD 'onerec';
CREATE DATABASE airflow OWNER airflow;
CREATE ROLE mlflow LOGIN PASSWORD 'onerec';
CREATE DATABASE mlflow OWNER mlflow;
