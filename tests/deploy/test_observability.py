"""deploy/observability and the metrics ports: Prometheus scrapes every service where it exports
`/metrics`, the dashboard only asks for series the services export, the compose profile mounts
files that exist, and every Kubernetes pod is annotated with its metrics port."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from services.common.service_metrics import ServiceMetrics
from services.engine_hf.metrics import EngineMetrics
from services.gateway.metrics import GatewayMetrics
from services.gateway.routing import ReplicaRouter
from tests.deploy.conftest import ROOT
from tests.deploy.test_compose import mesh_services, settings_of

OBSERVABILITY = ROOT / "deploy" / "observability"
K8S_BASE = ROOT / "deploy" / "k8s" / "base"


def _exported() -> set[str]:
    """Every series name the gateway, the HF engine (vLLM's names) and the tokenizer export."""
    registries = [
        GatewayMetrics(ReplicaRouter(None)).registry,
        EngineMetrics("m").registry,
        ServiceMetrics("tokenizer").registry,
    ]
    suffixes = {"histogram": ("_bucket", "_sum", "_count"), "counter": ("_total",)}
    names = set()
    for registry in registries:
        for family in registry.collect():
            names |= {family.name, *(family.name + s for s in suffixes.get(family.type, ()))}
    return names


def test_prometheus_scrapes_every_service_on_its_metrics_port(compose_doc):
    config = yaml.safe_load((OBSERVABILITY / "prometheus.yml").read_text())
    static = next(job for job in config["scrape_configs"] if job["job_name"] == "hfmesh")
    targets = {t["targets"][0] for t in static["static_configs"]}
    expected = set()
    for name, service in mesh_services(compose_doc).items():
        if "gpu" in service.get("profiles", []):
            continue  # the CPU twin's name, which the GPU engine carries as an alias
        settings = settings_of(service)
        port = getattr(settings, "metrics_port", None) or settings.port
        assert service["labels"]["hfmesh.io/metrics-port"] == str(port), name
        expected.add(f"{name}:{port}")
    assert targets == expected
    assert all(
        getattr(settings_of(s), "metrics_port", True) for s in mesh_services(compose_doc).values()
    ), "every service but the gateway takes --metrics_port"


def test_the_dashboard_asks_only_for_exported_series():
    dashboard = json.loads((OBSERVABILITY / "grafana" / "hfmesh.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    assert len(exprs) >= 8
    # series names, once label matchers `{...}` and groupings `by (...)` are taken out
    bare = [re.sub(r"\{[^}]*\}|by \([^)]*\)", "", expr) for expr in exprs]
    used = {n for expr in bare for n in re.findall(r"\b((?:vllm:|gen_ai_|hfmesh_)[a-z_:]+)", expr)}
    assert used and used <= _exported(), used - _exported()


@pytest.mark.parametrize("service", ["otel-collector", "prometheus", "grafana"])
def test_the_observability_profile_mounts_its_files(compose_doc, service):
    declared = compose_doc["services"][service]
    assert declared["profiles"] == ["observability"]
    for volume in declared["volumes"]:
        source = volume.split(":")[0]
        assert (ROOT / "deploy" / "compose" / source).resolve().is_file(), source


def test_every_pod_is_annotated_with_its_metrics_port():
    for path in sorted(K8S_BASE.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if not document or document.get("kind") != "Deployment":
                continue
            template = document["spec"]["template"]
            annotations = template["metadata"].get("annotations", {})
            assert annotations.get("prometheus.io/scrape") == "true", path.name
            ports = {p["containerPort"] for p in template["spec"]["containers"][0]["ports"]}
            assert int(annotations["prometheus.io/port"]) in ports, path.name


def test_traces_are_off_unless_the_env_file_names_a_collector(compose_doc):
    env_path = Path(ROOT / "deploy" / "compose" / ".env")
    assert "HFMESH_OTLP_ENDPOINT=\n" in env_path.read_text()
    for service in mesh_services(compose_doc).values():
        assert service["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"] == "${HFMESH_OTLP_ENDPOINT:-}"
