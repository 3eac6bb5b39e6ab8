#!/usr/bin/env bash
# Install headless Chromium + chromedriver (Debian packages) for the MLflow UI browser test
# (tests/integration/test_mlflow_ui.py). Idempotent: does nothing when /usr/bin/chromium and
# /usr/bin/chromedriver exist. Needs root (or sudo) and apt; the test FAILS without the browser.
set -euo pipefail
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
  echo "[browser] chromium present: $(/usr/bin/chromium --version 2>/dev/null || echo unknown)"
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "[browser] need root or sudo to apt-get install chromium" >&2; exit 1; }
  SUDO="sudo"
fi
echo "[browser] installing chromium + chromium-driver (apt)"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null
echo "[browser] $(/usr/bin/chromium --version)"
