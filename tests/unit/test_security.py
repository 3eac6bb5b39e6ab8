"""Security defaults: no credential in the repository, credentials reach clusters only through
Secrets / environment variables, and the local scripts bind their servers to 127.0.0.1 with Ray token
auth on. The other defaults are pinned where the code lives; `test_security_defaults_have_tests`
checks that those tests are still there:
  - YAML is read with a safe loader (`!!python/object` refused):  tests/unit/test_config.py
  - annotation paths cannot leave the dataset root, per source:  tests/unit/data/
  - tampered / pickled checkpoints are refused:                  tests/unit/test_checkpoint.py
  - a job submitted without the token is refused (401/403):      tests/integration/test_local_cluster.py
  - etva serve: no / a wrong token is a 401, a file name is text:  tests/integration/test_serve.py
  - etva serve: header or cookie only, constant-time, token files: tests/unit/jobs/test_serve_app.py
"""

from __future__ import annotations

import ast
import re
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # `cluster/` is glue, not an installed package
    sys.path.insert(0, str(REPO))

# A value is a placeholder (allowed) when it is `${VAR}`, `$VAR`, `<...>`, `{...}` or `***`-like.
PLACEHOLDER = re.compile(r"^(\$\{?\w+\}?|<[^>]*>|\{[^}]*\}|\*+|x+|\.\.\.)$", re.I)
SECRET_PATTERNS = {
    "private key": re.compile(
        r"-{5}BEGIN (?:RSA |EC |DSA |OPENSSH |ENCRYPTED |PGP )?PRIVATE KEY(?: BLOCK)?-{5}"
    ),
    "AWS access key id": re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    "AWS secret key": re.compile(r"aws_secret_access_key\s*[=:]\s*['\"]?([A-Za-z0-9/+]{40})\b", re.I),
    "GitHub token": re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36,}\b"),
    "Slack token": re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}"),
    "OpenAI/Anthropic-style key": re.compile(r"\bsk-(?:ant-)?[A-Za-z0-9_-]{32,}"),
    "JWT": re.compile(r"\beyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}"),
}
# scheme://<user>:<password>@<host>, the password captured
URI_PASSWORD = re.compile(r"\b[a-z][a-z0-9+.-]*://[^/\s:@'\"]+:([^@\s/'\"]+)@", re.I)
# password: "literal" / token = 'literal' in YAML, env files and code
ASSIGNED_SECRET = re.compile(
    r"(?:password|passwd|secret|token(?!iz)|api_?key)\w*[\"']?\s*[:=]\s*[\"']([^\"'\s]{8,})[\"']", re.I
)


def scan_text(text: str) -> list[str]:
    """Names of the credentials found in `text` (placeholders like ${VAR} or <password> allowed)."""
    found = [name for name, pattern in SECRET_PATTERNS.items() if pattern.search(text)]
    for m in URI_PASSWORD.finditer(text):
        if not PLACEHOLDER.match(m.group(1)):
            found.append(f"password in URI {m.group(0)[:40]!r}")
    for m in ASSIGNED_SECRET.finditer(text):
        value = m.group(1)
        is_path_or_call = value.startswith(("~/", "/", "./")) or re.fullmatch(r"[\w.]+\(.*", value)
        if not PLACEHOLDER.match(value) and not is_path_or_call:
            found.append(f"literal secret {m.group(0)[:40]!r}")
    return found


def _tracked_text_files() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    files = []
    for name in out.decode().split("\0"):
        path = REPO / name
        if name and path.is_file() and path.stat().st_size < 2_000_000:
            head = path.read_bytes()[:4096]
            if b"\0" not in head:
                files.append(path)
    return files


def test_scanner_flags_credentials_and_allows_placeholders():
    key_header = "-----BEGIN " + "RSA PRIVATE KEY-----"
    planted = [
        key_header,
        "AKIA" + "ABCDEFGHIJKLMNOP",
        "backend: postgresql://mlflow:" + "hunter2hunter2@db:5432/mlflow",
        "password: '" + "s3cr3t-pa55word'",
        "gh" + "p_" + "a" * 36,
    ]
    for text in planted:
        assert scan_text(text), f"not flagged: {text!r}"
    allowed = [
        "postgresql://${MLFLOW_DB_USER}:${MLFLOW_DB_PASSWORD}@${MLFLOW_DB_HOST}:5432/mlflow",
        "postgresql://user:<password>@host/db",
        "MLFLOW_DB_PASSWORD=",
        "token = ensure_token(s).read_text()",
        'TOKENIZER_CACHE = "tokenizer-cache"',
        '--from-literal=auth_token="$(openssl rand -hex 32)"',
        "RAY_AUTH_TOKEN: {valueFrom: {secretKeyRef: {name: etva-ray-auth, key: auth_token}}}",
    ]
    for text in allowed:
        assert not scan_text(text), f"false positive: {text!r} -> {scan_text(text)}"


def test_no_secrets_in_tracked_files():
    files = _tracked_text_files()
    assert len(files) > 20
    hits = {}
    for path in files:
        found = scan_text(path.read_text(errors="replace"))
        if found:
            hits[str(path.relative_to(REPO))] = found
    assert not hits, f"credentials in tracked files: {hits}"


def test_ray_token_and_local_state_are_not_tracked():
    names = [str(p.relative_to(REPO)) for p in _tracked_text_files()]
    assert not [n for n in names if n.startswith(("runs/", ".venv/")) or n.endswith("auth_token")]
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", "runs/local/ray_auth_token"], cwd=REPO, check=False
    ).returncode
    assert ignored == 0, "runs/ (the local token, mlflow.db) must be gitignored"


SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when present: same rules, faster
SENSITIVE_ENV = re.compile(r"TOKEN|PASSWORD|PASSWD|SECRET|ACCESS_KEY|CREDENTIAL", re.I)


def _k8s_docs() -> list[tuple[str, dict]]:
    docs = []
    for path in sorted((REPO / "cluster").rglob("*.yaml")):
        for doc in yaml.load_all(path.read_text(), Loader=SAFE_LOADER):
            if isinstance(doc, dict) and "apiVersion" in doc and "kind" in doc:
                docs.append((str(path.relative_to(REPO)), doc))
    return docs


def _containers(node):
    """Every container-like dict (has `image` and `name`) anywhere in a manifest."""
    if isinstance(node, dict):
        if "image" in node and "name" in node:
            yield node
        for value in node.values():
            yield from _containers(value)
    elif isinstance(node, list):
        for item in node:
            yield from _containers(item)


def test_manifests_take_credentials_from_secrets():
    docs = _k8s_docs()
    assert len(docs) >= 5
    checked = 0
    for path, doc in docs:
        assert doc["kind"] != "Secret", f"{path}: a Secret object is committed; create it with kubectl"
        for container in _containers(doc):
            for env in container.get("env", []):
                if SENSITIVE_ENV.search(env["name"]) and env["name"] != "RAY_AUTH_MODE":
                    assert "value" not in env, f"{path}: {env['name']} has a literal value"
                    assert "secretKeyRef" in env["valueFrom"], f"{path}: {env['name']} not from a Secret"
                    checked += 1
    assert checked >= 8


def test_launcher_yaml_has_no_credentials():
    cfg = yaml.safe_load((REPO / "cluster" / "aws" / "etva-gpu.yaml").read_text())
    assert not {"aws_access_key_id", "aws_secret_access_key"} & {k.lower() for k in cfg["provider"]}
    assert "ssh_private_key" not in cfg["auth"], "ray up creates and keeps the key outside the repo"
    for remote, local in cfg["file_mounts"].items():
        if "token" in remote or ".env" in remote:
            assert local.startswith("~/"), f"{remote} must come from the user's home, not the repo"


# ------------------------------------------------------------------------------ local scripts
class _Spawned(Exception):
    def __init__(self, cmd, env):
        super().__init__(cmd)
        self.cmd, self.env = cmd, env


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _captured(monkeypatch, tmp_path, start) -> _Spawned:
    """The command and environment cluster.local would start (nothing is started)."""
    from cluster import local, local_procs

    def fake_spawn(cmd, env, log_path):
        raise _Spawned(cmd, env)

    monkeypatch.setattr(local_procs, "spawn_detached", fake_spawn)
    settings = local.LocalSettings(
        state_dir=tmp_path / "state",
        ray_temp_dir=tmp_path / "ray",
        ray_port=_free_port(),
        dashboard_port=_free_port(),
        mlflow_port=_free_port(),
    )
    with pytest.raises(_Spawned) as info:
        start(settings)
    return info.value


def test_local_ray_head_binds_loopback_with_token_auth(monkeypatch, tmp_path):
    from cluster import local

    spawned = _captured(monkeypatch, tmp_path, local.start_ray_head)
    assert "--dashboard-host=127.0.0.1" in spawned.cmd
    assert "--node-ip-address=127.0.0.1" in spawned.cmd
    assert not [a for a in spawned.cmd if "0.0.0.0" in a]
    assert spawned.env["RAY_AUTH_MODE"] == "token"
    token = Path(spawned.env["RAY_AUTH_TOKEN_PATH"])
    assert stat.S_IMODE(token.stat().st_mode) == 0o600 and len(token.read_text().strip()) >= 32
    assert "RAY_AUTH_TOKEN" not in spawned.env, "the token travels as a file path, not a value"


def test_local_mlflow_binds_loopback(monkeypatch, tmp_path):
    from cluster import local

    spawned = _captured(monkeypatch, tmp_path, local.start_mlflow)
    assert spawned.cmd[spawned.cmd.index("--host") + 1] == "127.0.0.1"
    assert spawned.cmd[spawned.cmd.index("--backend-store-uri") + 1].startswith("sqlite:///")


def test_local_settings_default_to_loopback():
    from cluster import local

    settings = local.LocalSettings.from_env()
    assert settings.host == "127.0.0.1"
    assert settings.dashboard_url.startswith("http://127.0.0.1:")
    assert settings.mlflow_uri.startswith("http://127.0.0.1:")


# ------------------------------------------------------------------------ pinned elsewhere
@pytest.mark.parametrize(
    "test_file, names",
    [
        ("tests/unit/test_config.py", ["test_yaml_is_read_safely"]),
        (
            "tests/unit/test_checkpoint.py",
            [
                "test_tampered_weights_are_refused",
                "test_pickled_objects_are_refused_even_with_valid_manifest",
            ],
        ),
        ("tests/integration/test_local_cluster.py", ["test_job_api_refuses_without_token"]),
        (
            "tests/integration/test_serve.py",
            [
                "test_every_data_route_needs_the_token",
                "test_search_page_in_a_headless_browser",
                "test_a_second_serve_with_another_host_is_refused",
            ],
        ),
        (
            "tests/unit/jobs/test_serve_app.py",
            [
                "test_a_request_proves_the_token_by_header_or_cookie_never_by_url",
                "test_login_sets_an_httponly_strict_cookie_for_the_right_token_only",
                "test_token_file_must_be_private_and_long_enough",
                "test_build_app_rejects_unknown_args_and_a_token_in_its_args",
                "test_rayservice_serve_config_is_valid_and_takes_the_token_from_the_secret",
            ],
        ),
    ],
)
def test_security_defaults_have_tests(test_file, names):
    tree = ast.parse((REPO / test_file).read_text())
    defined = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
    assert set(names) <= defined, f"{test_file} lost {set(names) - defined}"


def test_every_data_source_has_a_path_escape_test():
    text = "\n".join(p.read_text() for p in (REPO / "tests" / "unit" / "data").glob("test_*.py"))
    assert "../../etc/passwd" in text  # MSRVTT video ids
    assert '"../../v_x"' in text  # ActivityNet keys
    assert "1004_Juno/../../x_y" in text  # LSMDC clip ids
    assert '"../../elsewhere"' in text  # feature-store manifests
    assert "os.symlink(outside" in text  # a symlink out of the root
