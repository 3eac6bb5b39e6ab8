#!/usr/bin/env bash
# Start the local Ray head (token auth) and MLflow server; idempotent. Prints the addresses.
# Returns once a job can be submitted; a taken port stops it before anything starts, naming the port.
# Usage: bash cluster/start_local.sh [--ray|--mlflow] [--num-cpus N] [--state-dir D] [--<port flag> N];
# then `source runs/local/env.sh`. Port flags: --ray-port, --dashboard-port, --mlflow-port,
# --dashboard-agent-listen-port, --dashboard-agent-grpc-port, --metrics-export-port,
# --ray-client-server-port (the last four are picked when not named; see cluster/README.md).
# Settings: ETVA_STATE_DIR, ETVA_RAY_PORT, ETVA_DASHBOARD_PORT, ETVA_MLFLOW_PORT, ETVA_NUM_CPUS,
# ETVA_RAY_TOKEN_PATH (see cluster/local.py).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
exec "${ETVA_VENV:-$ROOT/.venv}/bin/python" -m cluster.local start "$@"
