"""`deploy/observability/`: Prometheus, Grafana and an OpenTelemetry Collector for the mesh.

Generated with the compose file (`services.launcher.manifests compose`) from the same containers:

- `prometheus.yml`: one scrape target per container, `NAME:PORT` as compose names them (the
  gateway on its HTTP port, every other service on its metrics port), labelled with its role
  and model; `prometheus-kubernetes.yml`: for a Prometheus running in the cluster, the pods
  found by their `prometheus.io/*` annotations (the Kubernetes manifests set them).
- `grafana/`: a Prometheus data source and the `hfmesh` dashboard (`dashboard`): time to first
  token, throughput, queue depth and errors per model, outcomes per route family, engine load.
- `otel-collector.yaml`: OTLP/gRPC and HTTP in, batched, out to the collector's log (`debug`);
  point its `exporters` at a tracing backend to keep the traces.

The compose profile `observability` runs the three (`compose_services`); services export traces
when `HFMESH_OTLP_ENDPOINT` names the collector (`.env`, empty by default: tracing off).
"""

from __future__ import annotations

import json
from typing import Any

from services.launcher.topology import Container

PROMETHEUS_IMAGE = "docker.io/prom/prometheus:v3.5.0"
GRAFANA_IMAGE = "docker.io/grafana/grafana:12.1.0"
COLLECTOR_IMAGE = "docker.io/otel/opentelemetry-collector:0.130.0"
#: Where compose.yaml (in deploy/compose/) finds these files.
FROM_COMPOSE = "../observability"
GRAFANA_DASHBOARDS = "/var/lib/grafana/dashboards"
GRAFANA_PROVISIONING = "/etc/grafana/provisioning"
OTLP_GRPC_PORT = 4317
DASHBOARD_UID = "hfmesh"


def _global() -> dict[str, Any]:
    return {"scrape_interval": "15s", "evaluation_interval": "15s"}


def prometheus_config(containers: list[Container]) -> dict[str, Any]:
    targets = []
    for container in containers:
        labels = {"service": container.name, "role": container.role}
        if container.model is not None:
            labels["model"] = container.model.name
        port = container.metrics_port or container.port
        targets.append({"targets": [f"{container.name}:{port}"], "labels": labels})
    return {
        "global": _global(),
        "scrape_configs": [{"job_name": "hfmesh", "static_configs": targets}],
    }


def prometheus_kubernetes_config() -> dict[str, Any]:
    relabel = [
        {
            "source_labels": ["__meta_kubernetes_pod_annotation_prometheus_io_scrape"],
            "action": "keep",
            "regex": "true",
        },
        {
            "source_labels": [
                "__address__",
                "__meta_kubernetes_pod_annotation_prometheus_io_port",
            ],
            "regex": "([^:]+)(?::\\d+)?;(\\d+)",
            "replacement": "$1:$2",
            "target_label": "__address__",
        },
        {
            "source_labels": ["__meta_kubernetes_pod_label_app_kubernetes_io_name"],
            "target_label": "service",
        },
    ]
    return {
        "global": _global(),
        "scrape_configs": [
            {
                "job_name": "hfmesh",
                "kubernetes_sd_configs": [{"role": "pod"}],
                "relabel_configs": relabel,
            }
        ],
    }


def collector_config() -> dict[str, Any]:
    return {
        "receivers": {
            "otlp": {
                "protocols": {
                    "grpc": {"endpoint": f"0.0.0.0:{OTLP_GRPC_PORT}"},
                    "http": {"endpoint": "0.0.0.0:4318"},
                }
            }
        },
        "processors": {"batch": {}},
        "exporters": {"debug": {"verbosity": "basic"}},
        "service": {
            "pipelines": {
                "traces": {"receivers": ["otlp"], "processors": ["batch"], "exporters": ["debug"]}
            }
        },
    }


def grafana_datasources() -> dict[str, Any]:
    return {
        "apiVersion": 1,
        "datasources": [
            {
                "name": "Prometheus",
                "uid": "prometheus",
                "type": "prometheus",
                "access": "proxy",
                "url": "http://prometheus:9090",
                "isDefault": True,
            }
        ],
    }


def grafana_dashboards() -> dict[str, Any]:
    return {
        "apiVersion": 1,
        "providers": [
            {
                "name": "hfmesh",
                "type": "file",
                "options": {"path": GRAFANA_DASHBOARDS},
            }
        ],
    }


def _panel(
    title: str, targets: list[tuple[str, str]], unit: str, position: tuple[int, int]
) -> dict[str, Any]:
    x, y = position
    return {
        "type": "timeseries",
        "title": title,
        "datasource": {"type": "prometheus", "uid": "prometheus"},
        "gridPos": {"h": 8, "w": 12, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [
            {"refId": chr(ord("A") + i), "expr": expr, "legendFormat": legend}
            for i, (expr, legend) in enumerate(targets)
        ],
    }


def _quantile(q: float, metric: str) -> str:
    return (
        f"histogram_quantile({q}, sum by (le, gen_ai_request_model) "
        f"(rate({metric}_bucket[$__rate_interval])))"
    )


#: (title, [(PromQL, legend)], unit) per panel, two to a row.
PANELS: list[tuple[str, list[tuple[str, str]], str]] = [
    (
        "Time to first token per model (gateway)",
        [
            (
                _quantile(0.5, "gen_ai_server_time_to_first_token_seconds"),
                "p50 {{gen_ai_request_model}}",
            ),
            (
                _quantile(0.95, "gen_ai_server_time_to_first_token_seconds"),
                "p95 {{gen_ai_request_model}}",
            ),
        ],
        "s",
    ),
    (
        "Output tokens per second per model",
        [
            (
                "sum by (gen_ai_request_model) (rate(gen_ai_client_token_usage_sum"
                '{gen_ai_token_type="output"}[$__rate_interval]))',
                "{{gen_ai_request_model}}",
            )
        ],
        "none",
    ),
    (
        "Queue depth per model",
        [
            (
                'sum by (model) (hfmesh_gateway_model_requests{state="waiting"})',
                "gateway {{model}}",
            ),
            ("sum by (model_name) (vllm:num_requests_waiting)", "engines {{model_name}}"),
            ("sum by (model_name) (vllm:num_requests_running)", "running {{model_name}}"),
        ],
        "none",
    ),
    (
        "Errors per model",
        [
            (
                "sum by (gen_ai_request_model, error_type) (rate("
                'gen_ai_server_request_duration_seconds_count{error_type!=""}[$__rate_interval]))',
                "{{gen_ai_request_model}} {{error_type}}",
            )
        ],
        "reqps",
    ),
    (
        "Outcomes per route family",
        [
            (
                "sum by (family, outcome) (rate(hfmesh_gateway_outcomes_total[$__rate_interval]))",
                "{{family}} {{outcome}}",
            )
        ],
        "reqps",
    ),
    (
        "Request duration per model (gateway)",
        [
            (
                _quantile(0.5, "gen_ai_server_request_duration_seconds"),
                "p50 {{gen_ai_request_model}}",
            ),
            (
                _quantile(0.95, "gen_ai_server_request_duration_seconds"),
                "p95 {{gen_ai_request_model}}",
            ),
        ],
        "s",
    ),
    (
        "Engine batch / KV cache usage",
        [("max by (model_name) (vllm:kv_cache_usage_perc)", "{{model_name}}")],
        "percentunit",
    ),
    (
        "Tokenizer latency per operation (p95)",
        [
            (
                "histogram_quantile(0.95, sum by (le, operation) (rate("
                "hfmesh_tokenizer_request_duration_seconds_bucket[$__rate_interval])))",
                "{{operation}}",
            )
        ],
        "s",
    ),
]


def dashboard() -> dict[str, Any]:
    panels = [
        _panel(title, targets, unit, (12 * (i % 2), 8 * (i // 2)))
        for i, (title, targets, unit) in enumerate(PANELS)
    ]
    for number, panel in enumerate(panels, start=1):
        panel["id"] = number
    return {
        "uid": DASHBOARD_UID,
        "title": "hfmesh",
        "tags": ["hfmesh"],
        "timezone": "browser",
        "schemaVersion": 39,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "panels": panels,
    }


def dashboard_json() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


def compose_services() -> dict[str, Any]:
    """The `observability` profile's services."""
    profile = ["observability"]
    return {
        "otel-collector": {
            "image": COLLECTOR_IMAGE,
            "profiles": profile,
            "command": ["--config=/etc/otelcol/config.yaml"],
            "volumes": [f"{FROM_COMPOSE}/otel-collector.yaml:/etc/otelcol/config.yaml:ro"],
            "restart": "unless-stopped",
        },
        "prometheus": {
            "image": PROMETHEUS_IMAGE,
            "profiles": profile,
            "volumes": [f"{FROM_COMPOSE}/prometheus.yml:/etc/prometheus/prometheus.yml:ro"],
            "ports": ["${HFMESH_PROMETHEUS_PORT:-9090}:9090"],
            "restart": "unless-stopped",
        },
        "grafana": {
            "image": GRAFANA_IMAGE,
            "profiles": profile,
            "environment": {
                "GF_AUTH_ANONYMOUS_ENABLED": "true",
                "GF_AUTH_ANONYMOUS_ORG_ROLE": "Viewer",
                "GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH": f"{GRAFANA_DASHBOARDS}/hfmesh.json",
            },
            "volumes": [
                f"{FROM_COMPOSE}/grafana/{name}.yaml:{GRAFANA_PROVISIONING}/{name}/hfmesh.yaml:ro"
                for name in ("datasources", "dashboards")
            ]
            + [
                f"{FROM_COMPOSE}/grafana/hfmesh.json:{GRAFANA_DASHBOARDS}/hfmesh.json:ro",
            ],
            "ports": ["${HFMESH_GRAFANA_PORT:-3000}:3000"],
            "depends_on": {"prometheus": {"condition": "service_started"}},
            "restart": "unless-stopped",
        },
    }
