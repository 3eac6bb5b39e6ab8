# ETVA image for KubeRay pods (head, GPU and CPU workers, RayJob submitters) and the in-cluster MLflow
# server. Ray 2.60.0 / Python 3.11 / CUDA base from the Ray project; the CUDA build of the pinned torch
# is installed first so that installing the project cannot pull another torch.
#
#   docker build -t <registry>/etva:0.1.0-cu128 . && docker push <registry>/etva:0.1.0-cu128
#   (CPU-only image: --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu)
ARG RAY_IMAGE=rayproject/ray:2.60.0-py311-gpu
FROM ${RAY_IMAGE}

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ENV HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1

RUN pip install --no-cache-dir "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"

WORKDIR /home/ray/etva
COPY --chown=ray:users pyproject.toml README.md ./
COPY --chown=ray:users etva ./etva
COPY --chown=ray:users ray_jobs ./ray_jobs
COPY --chown=ray:users tuning ./tuning
COPY --chown=ray:users cluster ./cluster
# The project with its pinned set (ray 2.60.0 is already in the base image, torch is pinned above);
# mlflow[auth] (Flask-WTF for the basic-auth app), psycopg2 and boto3 serve only the MLflow server of
# cluster/mlflow/k8s.yaml (basic-auth login, PostgreSQL store, S3 artifacts).
RUN pip install --no-cache-dir "torch==${TORCH_VERSION}" -e . "mlflow[auth]==3.17.2" "psycopg2-binary>=2.9" "boto3>=1.34" \
    && python -c "import torch, ray, etva; assert ray.__version__ == '2.60.0', ray.__version__"
