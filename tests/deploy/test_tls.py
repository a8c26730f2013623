"""The optional TLS of the deployments: compose's overlay (`deploy/compose/compose.tls.yaml`)
and the kustomize Component (`deploy/k8s/components/tls`) give every hfmesh service the mesh's
certificate, key and CA as its `HFMESH_TLS_*` settings, and their probes still work."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from services.common.settings import TlsFlags
from tests.deploy.conftest import ROOT
from tests.deploy.test_compose import SCHEMA, SETTINGS, image_of, mesh_services
from tests.deploy.test_k8s import KUBERNETES_VERSION

OVERLAY = ROOT / "deploy" / "compose" / "compose.tls.yaml"
COMPONENT = ROOT / "deploy" / "k8s" / "components" / "tls"
TLS_ENV = {f"HFMESH_{name.upper()}" for name in TlsFlags.model_fields}
MOUNT = "/etc/hfmesh/tls"


def _merged(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """Compose's merge of an overlay, for what this overlay sets (environment, volumes)."""
    merged = json.loads(json.dumps(base))
    for name, extra in overlay["services"].items():
        service = merged["services"][name]
        service["environment"] = {**service.get("environment", {}), **extra["environment"]}
        service["volumes"] = [*service.get("volumes", []), *extra["volumes"]]
    return merged


def hfmesh_services(compose_doc: dict[str, Any]) -> set[str]:
    """The services running an hfmesh image (not a database or other helper beside them)."""
    return {
        name
        for name, service in mesh_services(compose_doc).items()
        if image_of(service).removesuffix("-cpu").removesuffix("-cuda") in SETTINGS
    }


def test_compose_overlay_covers_every_service_and_validates(compose_doc):
    overlay = yaml.safe_load(OVERLAY.read_text())
    assert set(overlay["services"]) == hfmesh_services(compose_doc)
    merged = _merged(compose_doc, overlay)
    validator = jsonschema.Draft201909Validator(json.loads(SCHEMA.read_text()))
    assert [e.message for e in validator.iter_errors(merged)] == []
    for name in overlay["services"]:
        service = merged["services"][name]
        tls = {k: v for k, v in service["environment"].items() if k.startswith("HFMESH_TLS_")}
        assert set(tls) <= TLS_ENV, name
        assert {Path(v).name for v in tls.values()} == {"mesh.pem", "mesh-key.pem", "ca.pem"}
        assert all(v.startswith(MOUNT + "/") for v in tls.values()), name
        assert any(str(v).endswith(f":{MOUNT}:ro") for v in service["volumes"]), name
        # the healthcheck reads the same variables: no probe needs flags of its own
        assert service["healthcheck"]["test"][3] == "services.common.healthcheck"


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> list[dict[str, Any]]:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed (it renders the kustomize overlays)")
    folder = tmp_path_factory.mktemp("tls-overlay")
    k8s = os.path.relpath(ROOT / "deploy" / "k8s", folder)  # kustomize takes relative paths
    (folder / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [f"{k8s}/overlays/cpu"],
                "components": [f"{k8s}/components/tls"],
            }
        )
    )
    out = subprocess.run(
        ["kubectl", "kustomize", str(folder)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def test_k8s_component_renders_valid_objects(rendered):
    import kubernetes_validate

    for obj in rendered:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def test_k8s_component_mounts_the_secret_and_probes_over_tls(rendered):
    roles = {"control-plane", "tokenizer", "huggingface", "vllm", "gateway"}
    deployments = [
        o
        for o in rendered
        if o["kind"] == "Deployment" and o["metadata"]["labels"].get("hfmesh.io/role") in roles
    ]
    assert {d["metadata"]["labels"]["hfmesh.io/role"] for d in deployments} == roles
    for deployment in deployments:
        name = deployment["metadata"]["name"]
        pod = deployment["spec"]["template"]["spec"]
        container = pod["containers"][0]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert TLS_ENV <= set(env), name
        assert env["HFMESH_TLS_SERVER_NAME"] == "hfmesh"
        assert {"name": "tls", "secret": {"secretName": "hfmesh-tls"}} in pod["volumes"]
        assert any(m["mountPath"] == MOUNT for m in container["volumeMounts"]), name
        role = deployment["metadata"]["labels"]["hfmesh.io/role"]
        if role == "gateway":
            continue  # its HTTP probes stay
        port = next(p["containerPort"] for p in container["ports"] if p["name"] == "grpc")
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert "grpc" not in container[probe], (name, probe)
            command = container[probe]["exec"]["command"]
            assert command == ["python", "-m", "services.common.healthcheck", "grpc", str(port)]


def test_dev_certificate_names_every_compose_service_when_run_by_a_relative_path(
    compose_doc, tmp_path
):
    """`scripts/make_dev_certs.sh DIR`, as docs/tls.md says to run it from the repository root:
    the certificate names every service the overlay's members dial (engines included)."""
    if shutil.which("openssl") is None:
        pytest.skip("needs openssl")
    out = tmp_path / "certs"
    subprocess.run(
        ["scripts/make_dev_certs.sh", str(out)], cwd=ROOT, check=True, capture_output=True
    )
    text = subprocess.run(
        ["openssl", "x509", "-in", str(out / "mesh.pem"), "-noout", "-ext", "subjectAltName"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    names = {part.strip().removeprefix("DNS:") for part in text.split("\n", 1)[1].split(",")}
    assert hfmesh_services(compose_doc) <= names, hfmesh_services(compose_doc) - names
