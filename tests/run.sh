#!/usr/bin/env bash
# The project's test command: set up the environment (idempotent), lint, then run the whole suite.
# Usage: bash tests/run.sh [extra pytest args]
#   bash tests/run.sh tests/unit          # the unit tests alone (no Ray head, no MLflow server)
#   bash tests/run.sh -m "not integration" # the same, selected by marker
# Test files run in ETVA_TEST_WORKERS pytest processes side by side (default 2; 0 = one process): one
# process leaves the cores idle while it waits on servers and jobs; two kept a 2-core machine busy (4 %
# idle) and took 0.72x the time of one (README). A file runs whole in one process (its module fixtures are
# built once); each process starts its own Ray head and MLflow server on free ports.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash cluster/setup_env.sh
bash cluster/install_browser.sh
bash cluster/install_postgres.sh
PY="${ETVA_VENV:-$ROOT/.venv}/bin/python"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONHASHSEED=0
echo "[test] ruff check"
"$PY" -m ruff check "$ROOT"
echo "[test] pytest"
set +e
"$PY" -m pytest -ra --durations=15 -n "${ETVA_TEST_WORKERS:-2}" --dist loadfile "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "[test] FAILED: pytest collected no tests" >&2
  exit 1
fi
exit "$rc"
