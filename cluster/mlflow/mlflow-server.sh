#!/usr/bin/env bash
# The team's MLflow tracking server: PostgreSQL backend store, S3 artifact store served through the
# server (clients need no S3 credentials), basic-auth login, bound to a private address.
#
# Every setting comes from the environment (systemd EnvironmentFile, a Kubernetes Secret/ConfigMap):
#   MLFLOW_DB_HOST MLFLOW_DB_PORT(5432) MLFLOW_DB_NAME(mlflow) MLFLOW_DB_USER MLFLOW_DB_PASSWORD
#   MLFLOW_ARTIFACTS_DESTINATION   s3://<bucket>/mlflow-artifacts (IAM role / instance profile for S3)
#   MLFLOW_AUTH_ADMIN_PASSWORD     first start only: creates the `admin` user (basic-auth app)
#   MLFLOW_AUTH_DEFAULT_PERMISSION what a user may do on experiments others created and did not share
#                                  (NO_PERMISSIONS: private until shared; READ lets every user read all)
#   MLFLOW_HOST(127.0.0.1) MLFLOW_PORT(5000) MLFLOW_WORKERS(4)
#   MLFLOW_SERVER_ALLOWED_HOSTS    Host headers to accept when clients use a DNS name (MLflow >= 3.5
#                                  otherwise accepts only localhost and private IPs)
#   MLFLOW_FLASK_SERVER_SECRET_KEY CSRF secret of the login forms (generated per start when unset;
#                                  set it when several replicas serve one address)
#   MLFLOW_AUTH_DIR                where the generated auth config goes ($RUNTIME_DIRECTORY or /tmp)
#   MLFLOW_AUTH_CACHE_TTL_S(60)    seconds a worker trusts a checked login (0: check every request). A
#                                  check is a scrypt hash (0.7 s of CPU under load): without the cache
#                                  every request pays it (4-6 s per request on a loaded 2-core machine).
#                                  A password change or deleted user reaches other workers within it.
# The database URI (with the password) is handed to MLflow through its environment variable
# MLFLOW_BACKEND_STORE_URI and a 0600 auth config file, never on the command line (visible in ps).
set -euo pipefail

case "${MLFLOW_AUTH_CACHE_TTL_S:-60}" in
  ''|*[!0-9]*) echo "MLFLOW_AUTH_CACHE_TTL_S must be a whole number of seconds, got '${MLFLOW_AUTH_CACHE_TTL_S}'" >&2; exit 2 ;;
esac

: "${MLFLOW_DB_HOST:?set MLFLOW_DB_HOST (PostgreSQL host)}"
: "${MLFLOW_DB_USER:?set MLFLOW_DB_USER}"
: "${MLFLOW_DB_PASSWORD:?set MLFLOW_DB_PASSWORD}"
: "${MLFLOW_ARTIFACTS_DESTINATION:?set MLFLOW_ARTIFACTS_DESTINATION (e.g. s3://bucket/mlflow-artifacts)}"
MLFLOW="${MLFLOW_BIN:-mlflow}"
PY="${MLFLOW_PYTHON:-python3}"

# postgresql+psycopg2://<user>:<password>@<host>:<port>/<db> (SQLAlchemy 2.1 would pick psycopg 3 for a
# bare postgresql://), user and password percent-encoded
BACKEND_URI="$("$PY" -c '
import os
from urllib.parse import quote
e = os.environ
print("postgresql+psycopg2://{}:{}@{}:{}/{}".format(
    quote(e["MLFLOW_DB_USER"], safe=""), quote(e["MLFLOW_DB_PASSWORD"], safe=""),
    e["MLFLOW_DB_HOST"], e.get("MLFLOW_DB_PORT", "5432"), e.get("MLFLOW_DB_NAME", "mlflow")))
')"
export MLFLOW_BACKEND_STORE_URI="$BACKEND_URI"
export MLFLOW_ARTIFACTS_DESTINATION
# basic-auth's CSRF protection needs one secret key shared by all workers (and all replicas, if any)
if [ -z "${MLFLOW_FLASK_SERVER_SECRET_KEY:-}" ]; then
  MLFLOW_FLASK_SERVER_SECRET_KEY="$("$PY" -c 'import secrets; print(secrets.token_hex(32))')"
fi
export MLFLOW_FLASK_SERVER_SECRET_KEY
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"

# basic-auth: users and permissions in the same PostgreSQL database (configparser needs %% for %)
AUTH_DIR="${MLFLOW_AUTH_DIR:-${RUNTIME_DIRECTORY:-$(mktemp -d)}}"
umask 077
cat > "$AUTH_DIR/basic_auth.ini" <<INI
[mlflow]
default_permission = ${MLFLOW_AUTH_DEFAULT_PERMISSION:-NO_PERMISSIONS}
database_uri = ${BACKEND_URI//%/%%}
admin_username = admin
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
auth_cache_ttl_seconds = ${MLFLOW_AUTH_CACHE_TTL_S:-60}
INI
export MLFLOW_AUTH_CONFIG_PATH="$AUTH_DIR/basic_auth.ini"

exec "$MLFLOW" server \
  --app-name basic-auth \
  --serve-artifacts \
  --host "${MLFLOW_HOST:-127.0.0.1}" \
  --port "${MLFLOW_PORT:-5000}" \
  --workers "${MLFLOW_WORKERS:-4}"
