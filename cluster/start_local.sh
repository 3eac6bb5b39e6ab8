#!/usr/bin/env bash
# Start the local Ray head (token auth) and MLflow server; idempotent. Prints the addresses.
# Usage: bash cluster/start_local.sh [--ray|--mlflow] [--num-cpus N]; then `source runs/local/env.sh`
# Settings: ETVA_STATE_DIR, ETVA_RAY_PORT, ETVA_DASHBOARD_PORT, ETVA_MLFLOW_PORT, ETVA_NUM_CPUS,
# ETVA_RAY_TOKEN_PATH (see cluster/local.py).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
exec "${ETVA_VENV:-$ROOT/.venv}/bin/python" -m cluster.local start "$@"
