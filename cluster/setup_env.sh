#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv and install the pinned dependency set.
# Idempotent: a second run with an unchanged pyproject.toml installs nothing.
# torch is installed first and pinned, so no resolver step can pull a multi-GB CUDA build.
# On a GPU machine, set TORCH_INDEX_URL (e.g. https://download.pytorch.org/whl/cu128) to take the CUDA
# build of the same torch version instead.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${ETVA_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
TORCH_VERSION="2.13.0"

stamp_value() {
  cat "$ROOT/pyproject.toml" "$ROOT/cluster/setup_env.sh" | sha256sum | cut -d' ' -f1
}

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating virtual environment in $VENV"
  "$PY" -m venv "$VENV"
fi
STAMP="$VENV/.etva-stamp"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$(stamp_value)" ]; then
  echo "[setup] environment up to date ($VENV)"
  exit 0
fi
echo "[setup] installing pinned dependencies into $VENV (first run: about 2 minutes)"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
if [ -n "${TORCH_INDEX_URL:-}" ]; then
  "$VENV/bin/python" -m pip install --quiet "torch==$TORCH_VERSION" --index-url "$TORCH_INDEX_URL"
else
  "$VENV/bin/python" -m pip install --quiet "torch==$TORCH_VERSION" 2> >(grep -v "is ignored" >&2 || true)
fi
"$VENV/bin/python" -m pip install --quiet -e "$ROOT[dev,server]" 2> >(grep -v "is ignored" >&2 || true)
stamp_value > "$STAMP"
echo "[setup] done"
