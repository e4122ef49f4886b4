# syntax=docker/dockerfile:1
# MLflow tracking server: runs and model registry in PostgreSQL, artifacts in S3 (MinIO), non-root.
#   docker build -f docker/mlflow.Dockerfile -t sweeps-mlflow docker
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm
FROM ${PYTHON_IMAGE}
ARG MLFLOW_VERSION=3.17.2
ARG PSYCOPG_VERSION=3.3.9
ARG BOTO3_VERSION=1.44.5
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
RUN pip install "mlflow==${MLFLOW_VERSION}" "psycopg[binary]==${PSYCOPG_VERSION}" "boto3==${BOTO3_VERSION}" \
    && useradd --create-home --uid 1000 --shell /usr/sbin/nologin mlflow
USER 1000:1000
WORKDIR /home/mlflow
EXPOSE 5000
HEALTHCHECK --interval=10s --timeout=5s --start-period=90s --retries=6 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:5000/health', timeout=4)"]
# The backend store comes from $MLFLOW_BACKEND_STORE_URI (so its password is not on a command line).
CMD ["mlflow", "server", "--host", "0.0.0.0", "--port", "5000"]
