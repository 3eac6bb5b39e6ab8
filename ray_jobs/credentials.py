"""The MLflow login of jobs on a team tracking server (basic-auth), never in a job's runtime environment.

A runtime environment (``ray job submit --runtime-env-json``) is shown by the Ray dashboard and kept in
the job's metadata, so a password must not travel there. A job process finds its login, first match wins:

1. ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD`` in the environment the node gave it (a
   Kubernetes Secret as environment of the Ray container, a systemd ``EnvironmentFile``);
2. the credentials file named by ``$ETVA_MLFLOW_CREDENTIALS`` (a path: it may travel in the runtime
   environment), else MLflow's own ``~/.mlflow/credentials``: INI section ``[mlflow]`` with
   ``mlflow_tracking_username`` and ``mlflow_tracking_password``. It must be readable by its owner only
   (mode 0600 or 0400): a file others can read is refused. On KubeRay, mount a Secret there
   (``defaultMode: 0400``).

:func:`load_credentials` puts the file's login into this process's environment (MLflow's client reads it
from there); :func:`check_login` is the pre-submit check of ``etva train|tune|eval``.
"""

from __future__ import annotations

import base64
import configparser
import os
import stat
import urllib.error
import urllib.request
from pathlib import Path

__all__ = ["CREDENTIALS_ENV", "USER_ENV", "PASS_ENV", "credentials_path", "load_credentials", "check_login"]

CREDENTIALS_ENV = "ETVA_MLFLOW_CREDENTIALS"
USER_ENV, PASS_ENV = "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"


class LoginError(RuntimeError):
    """No usable login for a tracking server that asks for one, or a credentials file that is unsafe."""


def credentials_path() -> Path:
    return Path(os.environ.get(CREDENTIALS_ENV) or Path.home() / ".mlflow" / "credentials")


def load_credentials() -> bool:
    """Set ``MLFLOW_TRACKING_USERNAME/PASSWORD`` from the credentials file when the environment has none.

    Returns:
        True when this process now has a login (from the environment or the file).
    Raises:
        LoginError: the file is readable by others than its owner, or lacks one of the two keys.
    """
    if os.environ.get(USER_ENV) and os.environ.get(PASS_ENV):
        return True
    path = credentials_path()
    if not path.is_file():
        if os.environ.get(CREDENTIALS_ENV):
            raise LoginError(f"${CREDENTIALS_ENV}={path}: no such file")
        return False
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise LoginError(f"{path}: mode {mode:04o} lets others read the MLflow password; chmod 600 {path}")
    parser = configparser.ConfigParser()
    parser.read(path)
    section = parser["mlflow"] if parser.has_section("mlflow") else {}
    user, password = section.get("mlflow_tracking_username"), section.get("mlflow_tracking_password")
    if not user or not password:
        raise LoginError(
            f"{path}: expected a [mlflow] section with mlflow_tracking_username and mlflow_tracking_password"
        )
    os.environ[USER_ENV], os.environ[PASS_ENV] = user, password
    return True


def _status(url: str, login: tuple[str, str] | None, timeout: float) -> int:
    req = urllib.request.Request(url)
    if login:
        token = base64.b64encode(f"{login[0]}:{login[1]}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code


def check_login(uri: str, timeout: float = 10.0) -> None:
    """Raise LoginError when the tracking server at ``uri`` asks for a login this process lacks or that it
    rejects. A server without basic-auth passes (its API answers without a login)."""
    url = f"{uri.rstrip('/')}/api/2.0/mlflow/experiments/search?max_results=1"
    has = load_credentials()
    login = (os.environ[USER_ENV], os.environ[PASS_ENV]) if has else None
    code = _status(url, login, timeout)
    if code in (401, 403) and login is None:
        raise LoginError(
            f"the MLflow server at {uri} asks for a login: set {USER_ENV} and {PASS_ENV}, or write "
            f"them to {credentials_path()} (mode 0600; another file: ${CREDENTIALS_ENV})"
        )
    if code in (401, 403):
        raise LoginError(f"the MLflow server at {uri} rejected the login of user {login[0]!r} (HTTP {code})")
