"""The scale-out files: the AWS cluster-launcher YAML is validated the way `ray up` validates it (Ray's
own JSON schema), the KubeRay manifests carry the structure and auth wiring a cluster needs, and every
entry point, config and file they name exists and loads. No network, no cluster."""

from __future__ import annotations

import copy
import fnmatch
import functools
import json
import os
import re
import shlex
import stat
import subprocess
from pathlib import Path

import pytest
import yaml

from etva.config import load_config

REPO = Path(__file__).resolve().parents[2]
KUBERAY = REPO / "cluster" / "kuberay"
AWS_YAML = REPO / "cluster" / "aws" / "etva-gpu.yaml"
RAY_VERSION = "2.60.0"


SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when present: same rules, faster


@functools.cache
def _docs(path: Path) -> list[dict]:
    """The documents of a manifest (cached: treat as read-only)."""
    return [d for d in yaml.load_all(path.read_text(), Loader=SAFE_LOADER) if d]


def _by_kind(kind: str) -> list[tuple[Path, dict]]:
    found = [(p, d) for p in sorted(KUBERAY.glob("*.yaml")) for d in _docs(p) if d.get("kind") == kind]
    assert found, f"no {kind} manifest in {KUBERAY}"
    return found


def _cluster_specs() -> list[tuple[str, dict]]:
    specs = [(f"{p.name}:RayCluster", d["spec"]) for p, d in _by_kind("RayCluster")]
    specs += [(f"{p.name}:RayJob", d["spec"]["rayClusterSpec"]) for p, d in _by_kind("RayJob")]
    return specs


def _pod_templates(spec: dict) -> list[tuple[str, dict]]:
    pods = [("head", spec["headGroupSpec"]["template"]["spec"])]
    pods += [(g["groupName"], g["template"]["spec"]) for g in spec.get("workerGroupSpecs", [])]
    return pods


def _tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True)
    return out.stdout.split()


# ------------------------------------------------------------------------------ AWS cluster launcher
def _ray_schema() -> dict:
    import ray.autoscaler

    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


def test_launcher_yaml_validates_like_ray_up():
    """`ray up` = prepare_config (AWS defaults merged, setup commands merged) + validate_config
    (jsonschema against ray-schema.json + node-type checks); the file as written passes the schema too."""
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load(AWS_YAML.read_text())
    jsonschema.validate(raw, _ray_schema())
    prepared = prepare_config(copy.deepcopy(raw))
    validate_config(prepared)
    assert prepared["head_node_type"] == "head.cpu"
    # prepare_config prepends the common setup to head/worker setup: the project install runs everywhere
    assert any("setup_env.sh" in c for c in prepared["worker_setup_commands"])


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda c: c.update(unknown_field=1), "unknown_field"),
        (lambda c: c["available_node_types"]["worker.gpu"].update(min_workers="two"), "two"),
        (lambda c: c["provider"].pop("type"), "type"),
    ],
)
def test_schema_validation_catches_broken_launcher_configs(mutate, match):
    import jsonschema

    cfg = yaml.safe_load(AWS_YAML.read_text())
    mutate(cfg)
    with pytest.raises(jsonschema.ValidationError, match=match):
        jsonschema.validate(cfg, _ray_schema())


def test_launcher_auth_dashboard_and_install():
    cfg = yaml.safe_load(AWS_YAML.read_text())
    head = " ".join(cfg["head_start_ray_commands"])
    worker = " ".join(cfg["worker_start_ray_commands"])
    for cmds in (head, worker):
        assert "RAY_AUTH_MODE=token" in cmds and "RAY_AUTH_TOKEN_PATH=" in cmds
    assert "--dashboard-host=127.0.0.1" in head and "0.0.0.0" not in head
    assert "~/.ray/auth_token" in cfg["file_mounts"], "the token must reach every node"
    assert cfg["file_mounts"]["~/etva"] == "."
    nodes = cfg["available_node_types"]
    workers = [n for name, n in nodes.items() if name != cfg["head_node_type"]]
    assert any(n["resources"].get("GPU", 0) >= 1 for n in workers), "no GPU worker type"
    assert all(0 <= n["min_workers"] <= n["max_workers"] <= cfg["max_workers"] for n in workers)
    assert nodes[cfg["head_node_type"]]["resources"].get("GPU", 0) == 0, "CPU head"
    setup = " ".join(cfg["setup_commands"])
    assert "TORCH_INDEX_URL=https://download.pytorch.org/whl/cu" in setup and "setup_env.sh" in setup
    # setup_env.sh installs the pinned torch (from TORCH_INDEX_URL) before the project
    script = (REPO / "cluster" / "setup_env.sh").read_text()
    assert 0 < script.index('--index-url "$TORCH_INDEX_URL"') < script.index('-e "$ROOT[dev,server]"')


def test_launcher_rsync_excludes_keep_tracked_sources():
    """A bare pattern like "data" would also drop etva/data/ (the .gitignore bug of commit a7cd473)."""
    cfg = yaml.safe_load(AWS_YAML.read_text())
    tracked = _tracked_files()
    for pattern in cfg["rsync_exclude"]:
        if pattern.startswith("/"):
            hit = [f for f in tracked if f == pattern[1:] or f.startswith(pattern[1:] + "/")]
        else:
            name = pattern.removeprefix("**/")
            hit = [f for f in tracked if any(fnmatch.fnmatch(part, name) for part in f.split("/"))]
        assert not hit, f"rsync_exclude {pattern!r} would drop tracked files {hit[:3]}"


# ----------------------------------------------------------------------------------- KubeRay
@pytest.mark.parametrize("name, spec", _cluster_specs(), ids=lambda x: x if isinstance(x, str) else "")
def test_kuberay_cluster_structure(name, spec):
    assert spec["rayVersion"] == RAY_VERSION
    head = spec["headGroupSpec"]
    assert head["rayStartParams"].get("num-cpus") == "0", "head runs drivers, not training"
    head_limits = head["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert "nvidia.com/gpu" not in head_limits, "CPU head"
    gpu_groups = [
        g
        for g in spec["workerGroupSpecs"]
        if int(g["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu", 0)) >= 1
    ]
    assert gpu_groups, f"{name}: no worker group with nvidia.com/gpu limits"
    for g in spec["workerGroupSpecs"]:
        assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"], g["groupName"]
        assert "rayStartParams" in g and g["groupName"]


@pytest.mark.parametrize("name, spec", _cluster_specs(), ids=lambda x: x if isinstance(x, str) else "")
def test_kuberay_pods_shm_auth_and_mounts(name, spec):
    secret = spec["authOptions"]["secretName"]
    assert spec["authOptions"]["mode"] == "token"
    for group, pod in _pod_templates(spec):
        volumes = {v["name"]: v for v in pod["volumes"]}
        for c in pod["containers"]:
            mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
            assert "/dev/shm" in mounts, f"{name}/{group}: /dev/shm not mounted"
            assert volumes[mounts["/dev/shm"]["name"]]["emptyDir"]["medium"] == "Memory"
            assert all(m["name"] in volumes for m in c["volumeMounts"]), f"{name}/{group}: unknown volume"
            env = {e["name"]: e for e in c["env"]}
            assert env["RAY_AUTH_MODE"]["value"] == "token"
            ref = env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]
            assert (ref["name"], ref["key"]) == (secret, "auth_token"), "KubeRay reads key auth_token"
            assert "value" not in env["RAY_AUTH_TOKEN"]
            uri = env["MLFLOW_TRACKING_URI"]["valueFrom"]
            assert "configMapKeyRef" in uri or "secretKeyRef" in uri
            assert c["image"] == "${ETVA_IMAGE}" or RAY_VERSION in c["image"]


def test_rayjob_uses_the_raycluster_spec_and_a_real_entrypoint():
    (_, cluster), *_ = _by_kind("RayCluster")
    for path, job in _by_kind("RayJob"):
        assert job["apiVersion"] == "ray.io/v1"
        assert job["spec"]["rayClusterSpec"] == cluster["spec"], f"{path.name} drifted from raycluster.yaml"
        assert job["spec"]["shutdownAfterJobFinishes"] is True
        runtime_env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])
        assert runtime_env["working_dir"] == _dockerfile_workdir()
        _check_entrypoint(job["spec"]["entrypoint"], cluster["spec"])


def _check_entrypoint(entrypoint: str, spec: dict) -> None:
    argv = shlex.split(entrypoint)
    assert argv[:2] == ["python", "-m"], entrypoint
    module = argv[2]
    assert (REPO / (module.replace(".", "/") + ".py")).is_file(), f"{module} is not in the repo"
    for flag in ("--config", "--space"):
        if flag in argv:
            path = argv[argv.index(flag) + 1]
            assert not Path(path).is_absolute() and (REPO / path).is_file(), path
    config = argv[argv.index("--config") + 1]
    # a stable run (train) or sweep (tune) name makes re-applying the job resume it
    assert {"--run-name", "--name"} & set(argv), entrypoint
    overrides = [a for a in argv[3:] if "=" in a and not a.startswith("-")]
    cfg = load_config(REPO / config, overrides)
    storage = cfg.ray.storage_path
    shared = [
        m["mountPath"] for m in spec["headGroupSpec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    ]
    assert storage.startswith("s3://") or any(storage.startswith(m + "/") for m in shared if m != "/dev/shm")
    assert cfg.ray.use_gpu and cfg.mlflow.tracking_uri == "", "MLflow URI must come from the environment"


def test_entrypoint_check_fails_on_a_missing_config():
    (_, cluster), *_ = _by_kind("RayCluster")
    with pytest.raises(AssertionError):
        _check_entrypoint(
            "python -m ray_jobs.train --config ray_jobs/configs/nope.yaml --run-name x", cluster["spec"]
        )


def test_kuberay_referenced_objects_are_defined():
    claims = {d["metadata"]["name"]: d for _, d in _by_kind("PersistentVolumeClaim")}
    maps = {d["metadata"]["name"]: d for _, d in _by_kind("ConfigMap")}
    for name, spec in _cluster_specs():
        for group, pod in _pod_templates(spec):
            for v in pod["volumes"]:
                if "persistentVolumeClaim" in v:
                    claim = claims[v["persistentVolumeClaim"]["claimName"]]
                    assert "ReadWriteMany" in claim["spec"]["accessModes"], f"{name}/{group}"
            for e in pod["containers"][0]["env"]:
                ref = e.get("valueFrom", {}).get("configMapKeyRef")
                if ref:
                    assert ref["key"] in maps[ref["name"]]["data"], f"{name}/{group}: {ref}"
    assert maps["etva-mlflow"]["data"]["MLFLOW_TRACKING_URI"].startswith("http")


def _dockerfile_workdir() -> str:
    text = (REPO / "Dockerfile").read_text()
    return re.search(r"^WORKDIR\s+(\S+)", text, re.M).group(1)


def test_dockerfile_pins_ray_and_installs_cuda_torch_first():
    text = (REPO / "Dockerfile").read_text()
    assert re.search(rf"^ARG RAY_IMAGE=rayproject/ray:{re.escape(RAY_VERSION)}-py311-gpu$", text, re.M)
    torch_line = text.index('--index-url "${TORCH_INDEX_URL}"')
    assert 0 < torch_line < text.index("-e .")
    for folder in ("etva", "ray_jobs", "cluster"):
        assert re.search(rf"^COPY .*\b{folder} \./{folder}$", text, re.M), folder
    assert "mlflow[auth]==" in text, "the basic-auth app needs Flask-WTF (mlflow[auth])"


# ------------------------------------------------------------------------------------- MLflow
def test_mlflow_basic_auth_app_is_installed():
    from importlib.metadata import entry_points

    assert "basic-auth" in {e.name for e in entry_points(group="mlflow.app")}


def test_mlflow_server_script_keeps_the_password_off_the_command_line(tmp_path):
    pw = "p@ss%w/rd:1"  # a fake with characters that need percent-encoding in a URI
    env = {
        "PATH": os.environ["PATH"],
        "MLFLOW_BIN": "echo",
        "MLFLOW_PYTHON": str(Path(os.sys.executable)),
        "MLFLOW_DB_HOST": "db.internal",
        "MLFLOW_DB_USER": "mlflow",
        "MLFLOW_DB_PASSWORD": pw,
        "MLFLOW_ARTIFACTS_DESTINATION": "s3://bucket/mlflow",
        "MLFLOW_AUTH_DIR": str(tmp_path),
    }
    script = REPO / "cluster" / "mlflow" / "mlflow-server.sh"
    out = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, check=True).stdout
    argv = out.split()
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    assert {"--app-name", "basic-auth", "--serve-artifacts"} <= set(argv)
    assert pw not in out and "postgresql" not in out
    ini = tmp_path / "basic_auth.ini"
    assert stat.S_IMODE(ini.stat().st_mode) == 0o600
    import configparser

    from sqlalchemy.engine import make_url

    parser = configparser.ConfigParser()
    parser.read(ini)
    url = make_url(parser["mlflow"]["database_uri"])
    assert (url.drivername, url.host, url.port, url.database) == ("postgresql+psycopg2", "db.internal", 5432, "mlflow")
    assert parser["mlflow"]["default_permission"] == "NO_PERMISSIONS"  # experiments private until shared
    assert url.password == pw
    missing = {k: v for k, v in env.items() if k != "MLFLOW_DB_PASSWORD"}
    res = subprocess.run(["bash", str(script)], env=missing, capture_output=True, text=True)
    assert res.returncode != 0 and "MLFLOW_DB_PASSWORD" in res.stderr


def test_mlflow_k8s_and_systemd_files():
    docs = {d["kind"]: d for d in _docs(REPO / "cluster" / "mlflow" / "k8s.yaml")}
    assert docs["Service"]["spec"]["type"] == "ClusterIP"
    container = docs["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    script = container["command"][-1].removeprefix(_dockerfile_workdir() + "/")
    assert (REPO / script).is_file(), script
    env = {e["name"]: e for e in container["env"]}
    for name in ("MLFLOW_DB_PASSWORD", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_DB_USER", "MLFLOW_DB_HOST"):
        assert "secretKeyRef" in env[name]["valueFrom"], name
    unit = (REPO / "cluster" / "mlflow" / "etva-mlflow.service").read_text()
    assert re.search(r"^ExecStart=\S+/cluster/mlflow/mlflow-server\.sh$", unit, re.M)
    assert re.search(r"^EnvironmentFile=/etc/", unit, re.M) and "NoNewPrivileges=true" in unit


def test_cluster_readme_names_only_files_that_exist():
    text = (REPO / "cluster" / "README.md").read_text()
    paths = set(re.findall(r"\b((?:cluster|ray_jobs|tests)/[\w./-]+\.(?:yaml|py|sh|md|service))\b", text))
    assert len(paths) >= 8
    missing = sorted(p for p in paths if not (REPO / p).is_file())
    assert not missing, f"cluster/README.md names missing files: {missing}"
