"""deploy/k8s: every overlay renders with `kubectl kustomize` and is valid against the Kubernetes
schemas (`kubernetes-validate`, strict); probes, ports and the ConfigMap agree with the services."""

from __future__ import annotations

import base64
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import ROOT
from tests.deploy.test_compose import SETTINGS

K8S = ROOT / "deploy" / "k8s"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir())
KUBERNETES_VERSION = "1.33.0"


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request) -> tuple[str, list[dict[str, Any]]]:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed (it renders the kustomize overlays)")
    out = subprocess.run(
        ["kubectl", "kustomize", str(K8S / "overlays" / request.param)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return request.param, [d for d in yaml.safe_load_all(out) if d]


def by_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def test_overlays():
    assert OVERLAYS == ["cpu", "gpu", "tenants"]


def mesh_deployments(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The Deployments of hfmesh's own images (not the tenants component's Redis)."""
    return {
        name: d
        for name, d in by_kind(objects, "Deployment").items()
        if d["spec"]["template"]["spec"]["containers"][0]["image"].startswith("hfmesh/")
    }


def test_valid_against_the_kubernetes_schemas(rendered):
    import kubernetes_validate

    _, objects = rendered
    problems = []
    for obj in objects:
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            problems.append(f"{obj['kind']}/{obj['metadata']['name']}: {error.message}")
    assert problems == []


def test_probes_ports_and_config(rendered):
    overlay, objects = rendered
    services = by_kind(objects, "Service")
    config = next(iter(by_kind(objects, "ConfigMap").values()))
    mesh = yaml.safe_load(config["data"]["mesh.yaml"])
    for name, deployment in mesh_deployments(objects).items():
        pod = deployment["spec"]["template"]["spec"]
        container = pod["containers"][0]
        args = container["args"]
        port = int(args[args.index("--port") + 1])
        assert {p["containerPort"] for p in container["ports"]} >= {port}
        assert services[name]["spec"]["ports"][0]["port"] == port
        assert services[name]["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
        engine = deployment["metadata"]["labels"]["hfmesh.io/role"] in ("vllm", "huggingface")
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            action = container[probe].get("grpc") or container[probe]["httpGet"]
            assert action["port"] == port, (name, probe)
        if engine:
            startup = container["startupProbe"]
            assert startup["periodSeconds"] * startup["failureThreshold"] >= 600
            assert container["lifecycle"]["preStop"]
            assert pod["terminationGracePeriodSeconds"] > 30  # the server's drain grace
            assert container["volumeMounts"][0] == {
                "name": "models",
                "mountPath": "/models",
                "readOnly": True,
            }
            gpus = container["resources"]["limits"].get("nvidia.com/gpu")
            assert gpus == (1 if overlay == "gpu" else None)
            assert ("cuda" in container["image"]) == (overlay == "gpu")
        if "--model_list" in args:
            mount = next(m for m in container["volumeMounts"] if m["name"] == "mesh")
            assert mount["mountPath"] == args[args.index("--model_list") + 1]
            volume = next(v for v in pod["volumes"] if v["name"] == "mesh")
            assert volume["configMap"]["name"] == config["metadata"]["name"]
        for address in _addresses_of(mesh):
            host, _, target = address.partition(":")
            assert services[host]["spec"]["ports"][0]["port"] == int(target)
        assert container["resources"]["requests"] and container["resources"]["limits"]


def _addresses_of(mesh: dict[str, Any]) -> set[str]:
    return {
        address
        for entry in mesh["models"]
        for addresses in entry["endpoints"].values()
        for address in addresses
    }


def test_every_engine_has_a_pdb_and_an_hpa(rendered):
    _, objects = rendered
    engines = {
        name
        for name, d in by_kind(objects, "Deployment").items()
        if d["metadata"]["labels"]["hfmesh.io/role"] in ("vllm", "huggingface")
    }
    assert engines and set(by_kind(objects, "PodDisruptionBudget")) == engines
    hpas = by_kind(objects, "HorizontalPodAutoscaler")
    assert set(hpas) == engines
    for name, hpa in hpas.items():
        assert hpa["spec"]["scaleTargetRef"]["name"] == name
        assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


def test_control_plane_may_watch_endpointslices(rendered):
    _, objects = rendered
    deployment = by_kind(objects, "Deployment")["control-plane"]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "control-plane"
    assert "--kubernetes" in pod["containers"][0]["args"]
    rule = by_kind(objects, "Role")["control-plane"]["rules"][0]
    assert rule["resources"] == ["endpointslices"] and {"list", "watch"} <= set(rule["verbs"])
    binding = by_kind(objects, "RoleBinding")["control-plane"]
    assert binding["subjects"][0]["name"] == "control-plane"
    # the Services carry the labels the control plane selects EndpointSlices by
    for service in by_kind(objects, "Service").values():
        assert service["metadata"]["labels"]["hfmesh.io/role"]


def test_each_pod_registers_under_the_address_its_endpointslice_publishes(rendered):
    """One pod, one endpoint: the tokenizer and the engines register at their pod IP (what
    their EndpointSlices publish, on the Service's `grpc` port), and the control plane runs
    with `--kubernetes`, which makes the list's Service names a fallback only."""
    from services.common.registration import advertised_address
    from services.common.settings import parse_settings
    from services.engine_vllm.settings import split_argv

    _, objects = rendered
    services = by_kind(objects, "Service")
    registering = {}
    for name, deployment in mesh_deployments(objects).items():
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        env = {e["name"]: e for e in container["env"]}
        role = deployment["metadata"]["labels"]["hfmesh.io/role"]
        if role in ("gateway", "control-plane"):
            assert "HFMESH_ADVERTISE_HOST" not in env, name
            continue
        assert "HFMESH_CONTROL_PLANE" in env and "HFMESH_ADVERTISE_HOST" in env, name
        assert env["HFMESH_ADVERTISE_HOST"]["valueFrom"] == {
            "fieldRef": {"fieldPath": "status.podIP"}
        }, name
        registering[name] = (container, env)
    assert "tokenizer" in registering and "hf-tiny-sentiment" in registering
    for name, (container, env) in registering.items():
        image = container["image"].split("/")[1].split(":")[0]
        image = image.removesuffix("-cpu").removesuffix("-cuda")
        argv = container["args"]
        if image == "engine-vllm":
            argv, _ = split_argv(argv)
        environment = {
            "HFMESH_CONTROL_PLANE": env["HFMESH_CONTROL_PLANE"]["value"],
            "HFMESH_ADVERTISE_HOST": "10.244.1.7",  # what the kubelet puts there
        }
        settings, _ = parse_settings(
            SETTINGS[image], argv, prog=name, description="", env=environment
        )
        host = settings.advertise_host or settings.host
        address = advertised_address(host, settings.port, settings.control_plane)
        grpc_port = next(p for p in services[name]["spec"]["ports"] if p["name"] == "grpc")
        assert address == f"10.244.1.7:{grpc_port['port']}", name
    control_plane = by_kind(objects, "Deployment")["control-plane"]
    assert "--kubernetes" in control_plane["spec"]["template"]["spec"]["containers"][0]["args"]


def test_every_container_args_parse(rendered):
    from services.common.settings import parse_settings
    from services.engine_vllm.settings import split_argv

    _, objects = rendered
    for name, deployment in mesh_deployments(objects).items():
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        image = container["image"].split("/")[1].split(":")[0]
        image = image.removesuffix("-cpu").removesuffix("-cuda")
        argv = container["args"]
        if image == "engine-vllm":
            argv, rest = split_argv(argv)
            assert rest == []
        parse_settings(SETTINGS[image], argv, prog=name, description="", env={})


def test_tenants_overlay_wires_the_secret_and_redis(rendered):
    overlay, objects = rendered
    gateway = by_kind(objects, "Deployment")["gateway"]["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in gateway["containers"][0].get("env", [])}
    if overlay != "tenants":
        assert "HFMESH_TENANTS_FILE" not in env and "redis" not in by_kind(objects, "Service")
        return
    from services.gateway.tenants import parse_tenants

    secret = by_kind(objects, "Secret")["hfmesh-tenants"]
    mount = next(m for m in gateway["containers"][0]["volumeMounts"] if m["name"] == "tenants")
    assert env["HFMESH_TENANTS_FILE"] == f"{mount['mountPath']}/tenants.yaml"
    volume = next(v for v in gateway["volumes"] if v["name"] == "tenants")
    assert volume["secret"]["secretName"] == secret["metadata"]["name"]
    text = base64.b64decode(secret["data"]["tenants.yaml"]).decode()
    assert {t.name for _, t in parse_tenants(text, "secret")} == {"team-a", "team-b"}
    redis = by_kind(objects, "Service")["redis"]["spec"]["ports"][0]["port"]
    assert env["HFMESH_REDIS_URL"] == f"redis://redis:{redis}/0"


def test_keda_example_scales_an_engine_of_the_base():
    example = yaml.safe_load((K8S / "examples" / "keda-scaledobject.yaml").read_text())
    target = example["spec"]["scaleTargetRef"]["name"]
    assert (K8S / "base" / f"{target}.yaml").exists()
    assert example["kind"] == "ScaledObject"


def test_model_job_builds_what_the_engines_read():
    base = [d for d in yaml.safe_load_all((K8S / "base" / "models.yaml").read_text()) if d]
    job = next(d for d in base if d["kind"] == "Job")
    built = set(job["spec"]["template"]["spec"]["containers"][0]["args"][2:])
    mesh = yaml.safe_load((K8S / "base" / "mesh.yaml").read_text())
    assert {Path(e["source"]).name for e in mesh["models"]} == built
