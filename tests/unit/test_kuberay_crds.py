"""Every manifest in cluster/kuberay/ validates against the pinned upstream KubeRay CRDs (tests/kuberay_crds).

The CRD's ``openAPIV3Schema`` is checked with ``jsonschema`` after the Kubernetes dialect is mapped onto
JSON Schema the way the API server treats it: an object schema with ``properties`` rejects unknown fields
(the API server prunes them, so a misspelt key would silently vanish) unless it says
``x-kubernetes-preserve-unknown-fields``; ``nullable`` allows null; ``x-kubernetes-int-or-string`` allows an
integer or a string.
"""

from __future__ import annotations

import copy
from functools import cache
from pathlib import Path

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CRDS = REPO / "tests" / "kuberay_crds"
KUBERAY = REPO / "cluster" / "kuberay"
KINDS = ("RayCluster", "RayJob", "RayService")
Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def k8s_to_jsonschema(node):
    """A copy of a structural OpenAPI v3 schema in the JSON Schema dialect (see the module docstring)."""
    if isinstance(node, list):
        return [k8s_to_jsonschema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: k8s_to_jsonschema(v) for k, v in node.items() if not k.startswith("x-kubernetes-")}
    if node.get("x-kubernetes-int-or-string"):
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if "properties" in node and "additionalProperties" not in node and not node.get(
        "x-kubernetes-preserve-unknown-fields"
    ):
        out["additionalProperties"] = False
    if out.pop("nullable", False) and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


@cache
def crd_schemas() -> dict[tuple[str, str], dict]:
    """(kind, apiVersion) -> JSON schema of that version of the CRD."""
    out = {}
    for path in sorted(CRDS.glob("ray.io_*.yaml")):
        crd = yaml.load(path.read_text(), Loader=Loader)
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for v in crd["spec"]["versions"]:
            schema = k8s_to_jsonschema(copy.deepcopy(v["schema"]["openAPIV3Schema"]))
            out[(kind, f"{group}/{v['name']}")] = schema
    return out


def _manifests() -> list[tuple[str, int, dict]]:
    docs = []
    for path in sorted(KUBERAY.glob("*.yaml")):
        for i, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if doc and doc.get("kind") in KINDS:
                docs.append((path.name, i, doc))
    return docs


def test_the_pinned_crds_are_there():
    assert {k for k, _ in crd_schemas()} == set(KINDS)
    assert "v1.7.0" in (CRDS / "README.md").read_text()


@pytest.mark.parametrize("name, i, doc", _manifests(), ids=lambda v: v if isinstance(v, str) else "")
def test_manifest_validates_against_the_crd(name, i, doc):
    schema = crd_schemas().get((doc["kind"], doc["apiVersion"]))
    assert schema is not None, f"{name}: no pinned CRD for {doc['kind']} {doc['apiVersion']}"
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(doc), key=lambda e: list(e.path))
    assert not errors, f"{name} (document {i}): " + "; ".join(
        f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors[:5]
    )


def test_every_kind_is_covered_and_a_typo_is_caught():
    docs = _manifests()
    assert {d["kind"] for _, _, d in docs} == set(KINDS)
    service = next(d for _, _, d in docs if d["kind"] == "RayService")
    bad = copy.deepcopy(service)
    bad["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParam"] = {}  # misspelt key
    bad["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["replicas"] = "two"
    schema = crd_schemas()[("RayService", service["apiVersion"])]
    messages = [e.message for e in jsonschema.Draft7Validator(schema).iter_errors(bad)]
    assert any("rayStartParam" in m for m in messages) and any("'two' is not of type" in m for m in messages)
