#!/usr/bin/env bash
# Stop the local Ray head and MLflow server (by process group; only this cluster's processes).
# Usage: bash cluster/stop_local.sh [--ray|--mlflow] [--all-ray]   (--all-ray: also `ray stop --force`,
# which kills every Ray process on the machine)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
exec "${ETVA_VENV:-$ROOT/.venv}/bin/python" -m cluster.local stop "$@"
