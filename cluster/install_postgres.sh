#!/usr/bin/env bash
# Install PostgreSQL (Debian package) for the team MLflow server's test
# (cluster/team_server.py starts a private instance as an unprivileged user: the team_server test
# fixture, benchmarks/bench_team_server.py, `python -m cluster.team_server`).
# Idempotent: does nothing when an initdb exists under /usr/lib/postgresql/*/bin. Needs root (or sudo)
# and apt. The Debian package also creates the `postgres` system user the test runs the server as.
set -euo pipefail
found="$(ls -1 /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -1 || true)"
if [ -n "$found" ]; then
  echo "[postgres] present: $("$found" --version)"
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "[postgres] need root or sudo to apt-get install postgresql" >&2; exit 1; }
  SUDO="sudo"
fi
echo "[postgres] installing postgresql (apt)"
$SUDO apt-get update -qq
# the package's own cluster is not used (the test runs initdb in a temporary folder): keep it stopped
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
  $SUDO chmod +x /usr/sbin/policy-rc.d
  trap '$SUDO rm -f /usr/sbin/policy-rc.d' EXIT
fi
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends postgresql >/dev/null
echo "[postgres] $(ls -1 /usr/lib/postgresql/*/bin/initdb | sort -V | tail -1) installed"
