"""The mesh as Kubernetes objects: the kustomize base under `deploy/k8s/base/`.

One Deployment and Service per container of the topology (engines scaled by their entry's
`replicas`), the planned model list as a ConfigMap (kustomize's generator, so a new list rolls
the pods), the model cache on a PVC filled by a `models` Job (built-in models) and by init
containers that run the storage initializer (`python -m services.models fetch SOURCE DEST`) for
remote model sources before an engine or the tokenizer starts (credentials from the optional
Secret `hfmesh-model-credentials`; one fetch per destination at a time, idempotent), `pvc://`
sources' claims mounted read-only at `/mnt/pvc/<claim>`, and per engine a
PodDisruptionBudget and a HorizontalPodAutoscaler. Probes are native gRPC on numeric ports
(the gateway: HTTP); engines get a 10-minute startup budget for loading, a preStop pause so
endpoints are withdrawn before SIGTERM, and a grace period longer than the server's 30 s drain.
Services carry the `hfmesh.io/role` / `hfmesh.io/model` labels the control plane follows
(EndpointSlices inherit them; `services/control_plane/kubernetes.py`).

Addresses: a pod is one replica, at its pod IP. The tokenizer and the engines register under
`HFMESH_ADVERTISE_HOST` = `status.podIP` (the downward API), the address the EndpointSlices
publish for the same pod, so the two sources name it once. The `NAME:PORT` endpoints of the
planned list are Services; the control plane, run with `--kubernetes`, publishes them only for a
service none of whose pods is published (a Service's ClusterIP spreads calls over those same
pods, and counted beside them it would be one more replica that is none). Under TLS clients
check the name `hfmesh` (`HFMESH_TLS_SERVER_NAME`), not the pod IP they dial.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from services.common.model_list import Scaling
from services.common.model_source import DEFAULT_PVC_ROOT
from services.launcher.hpa import hpa_for
from services.launcher.topology import MESH_FILE, MODELS_DIR, SOURCES_DIR, Container

CONFIGMAP = "hfmesh-models"
PVC = "hfmesh-models"
#: The Secret whose keys (HF_TOKEN, AWS_ACCESS_KEY_ID, ...) the fetch init containers get.
CREDENTIALS_SECRET = "hfmesh-model-credentials"
FETCH_RESOURCES = {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"memory": "2Gi"}}
PART_OF = {"app.kubernetes.io/part-of": "hfmesh"}
#: Engines: startup probe every 10 s, 60 failures = a 10-minute loading budget.
STARTUP_PERIOD, STARTUP_FAILURES = 10, 60
PRESTOP_SECONDS = 5
GRACE_SECONDS = {"engine": 90, "gateway": 60, "other": 30}
RESOURCES = {
    "gateway": {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
    "tokenizer": {"requests": {"cpu": "500m", "memory": "512Mi"}, "limits": {"memory": "2Gi"}},
    "control-plane": {
        "requests": {"cpu": "100m", "memory": "128Mi"},
        "limits": {"memory": "512Mi"},
    },
    "huggingface": {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "8Gi"}},
    "vllm": {"requests": {"cpu": "2", "memory": "8Gi"}, "limits": {"memory": "16Gi"}},
}
#: HPA defaults where the model list has no `scaling` block.
DEFAULT_MAX_REPLICAS = 4
DEFAULT_TARGET_REQUESTS = 4
DEFAULT_SCALE_DOWN_DELAY = 300.0  # the HPA's own default window


def _labels(container: Container) -> dict[str, str]:
    labels = {"app.kubernetes.io/name": container.name, "hfmesh.io/role": container.role}
    if container.model is not None:
        labels["hfmesh.io/model"] = container.model.name
    return labels


def _probe(container: Container, **timing: int) -> dict[str, Any]:
    if container.probe == "http":
        # Ready = the gateway is up. /v2/health/ready is false while any model is loading,
        # and taking the gateway out of its Service then would cut every model, not just that one.
        action: dict[str, Any] = {"httpGet": {"path": "/v2/health/live", "port": container.port}}
    else:
        action = {"grpc": {"port": container.port}}
    return {**action, **timing}


def _probes(container: Container) -> dict[str, Any]:
    engine = container.model is not None
    startup = (STARTUP_PERIOD, STARTUP_FAILURES) if engine else (5, 24)
    return {
        "startupProbe": _probe(container, periodSeconds=startup[0], failureThreshold=startup[1]),
        "readinessProbe": _probe(container, periodSeconds=5, failureThreshold=2),
        "livenessProbe": _probe(container, periodSeconds=10, failureThreshold=3, timeoutSeconds=5),
    }


def _volumes(container: Container) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    if container.reads_mesh:
        volumes.append({"name": "mesh", "configMap": {"name": CONFIGMAP}})
        mounts.append(
            {"name": "mesh", "mountPath": MESH_FILE, "subPath": "mesh.yaml", "readOnly": True}
        )
    if container.mounts_models:
        volumes.append({"name": "models", "persistentVolumeClaim": {"claimName": PVC}})
        mounts.append({"name": "models", "mountPath": MODELS_DIR, "readOnly": True})
    for claim in container.claims:
        claim_source = {"claimName": claim, "readOnly": True}
        volumes.append({"name": f"pvc-{claim}", "persistentVolumeClaim": claim_source})
        mounts.append(
            {"name": f"pvc-{claim}", "mountPath": f"{DEFAULT_PVC_ROOT}/{claim}", "readOnly": True}
        )
    if container.role == "vllm":
        volumes.append({"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "2Gi"}})
        mounts.append({"name": "shm", "mountPath": "/dev/shm"})
    return volumes, mounts


def _ports(container: Container) -> list[dict[str, Any]]:
    name = "http" if container.probe == "http" else "grpc"
    ports = [{"name": name, "containerPort": container.port, "protocol": "TCP"}]
    if container.metrics_port:
        ports.append(
            {"name": "metrics", "containerPort": container.metrics_port, "protocol": "TCP"}
        )
    return ports


def _wait_for_model(container: Container) -> list[dict[str, Any]]:
    """An engine waits for the `models` Job's build marker instead of crash-looping."""
    model_dir = container.args[container.args.index("--model_dir") + 1]
    if not model_dir.startswith(MODELS_DIR + "/") or model_dir.startswith(SOURCES_DIR + "/"):
        return []  # not a built-in model (a fetched one has its fetch init container)
    marker = f"{model_dir}/.hfmesh_build.json"
    return [
        {
            "name": "wait-for-model",
            "image": f"hfmesh/{container.image}:latest",
            "command": ["sh", "-c", f"until [ -f {marker} ]; do sleep 5; done"],
            "volumeMounts": [{"name": "models", "mountPath": MODELS_DIR, "readOnly": True}],
        }
    ]


def _fetch_models(container: Container) -> list[dict[str, Any]]:
    """One init container per remote source: the storage initializer writes it to the model
    volume (nothing when it is there already), so the main container finds a complete folder."""
    return [
        {
            "name": f"fetch-{index}",
            "image": "hfmesh/models:latest",
            "args": ["fetch", uri, folder],
            "env": [{"name": "HFMESH_CACHE_DIR", "value": MODELS_DIR}],
            "envFrom": [{"secretRef": {"name": CREDENTIALS_SECRET, "optional": True}}],
            "volumeMounts": [{"name": "models", "mountPath": MODELS_DIR}],
            "resources": FETCH_RESOURCES,
            "securityContext": {"allowPrivilegeEscalation": False},
        }
        for index, (uri, folder) in enumerate(container.fetches)
    ]


def deployment(container: Container) -> dict[str, Any]:
    engine = container.model is not None
    volumes, mounts = _volumes(container)
    args = list(container.args)
    env: list[dict[str, Any]] = [
        {"name": k, "value": v} for k, v in sorted(container.environment.items())
    ]
    if container.registers:
        # Register under the pod IP, the address its EndpointSlice publishes: one pod, one
        # endpoint (the Service names of the model list only stand in while no pod is published).
        pod_ip = {"fieldRef": {"fieldPath": "status.podIP"}}
        env.append({"name": "HFMESH_ADVERTISE_HOST", "valueFrom": pod_ip})
    if container.role == "control-plane":
        # Follow the EndpointSlices of this namespace (the Role below allows it).
        args += ["--kubernetes", "--kubernetes_namespace", "$(POD_NAMESPACE)"]
        namespace = {"fieldRef": {"fieldPath": "metadata.namespace"}}
        env.insert(0, {"name": "POD_NAMESPACE", "valueFrom": namespace})
    main: dict[str, Any] = {
        "name": container.role if not engine else "engine",
        "image": f"hfmesh/{container.image}:latest",
        "args": args,
        "env": env,
        "ports": _ports(container),
        **_probes(container),
        "resources": RESOURCES[container.role],
        "volumeMounts": mounts,
        "securityContext": {"allowPrivilegeEscalation": False},
    }
    if engine or container.role == "gateway":
        main["lifecycle"] = {"preStop": {"exec": {"command": ["sleep", str(PRESTOP_SECONDS)]}}}
    kind = "engine" if engine else container.role if container.role == "gateway" else "other"
    pod: dict[str, Any] = {
        "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "fsGroup": 1000},
        "terminationGracePeriodSeconds": GRACE_SECONDS[kind],
        "containers": [main],
        "volumes": volumes,
    }
    init = [*(_wait_for_model(container) if engine else []), *_fetch_models(container)]
    if init:
        pod["initContainers"] = init
    if container.role == "control-plane":
        pod["serviceAccountName"] = "control-plane"
    annotations = {}
    if container.metrics_port or container.role == "gateway":
        port = container.metrics_port or container.port
        annotations = {
            "prometheus.io/scrape": "true",
            "prometheus.io/port": str(port),
            "prometheus.io/path": "/metrics",
        }
    labels = _labels(container)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": container.name, "labels": labels},
        "spec": {
            "replicas": container.model.replicas if container.model else 1,
            "selector": {"matchLabels": {"app.kubernetes.io/name": container.name}},
            "template": {
                "metadata": {
                    "labels": labels,
                    **({"annotations": annotations} if annotations else {}),
                },
                "spec": pod,
            },
        },
    }


def service(container: Container) -> dict[str, Any]:
    ports = [
        {"name": port["name"], "port": port["containerPort"], "targetPort": port["name"]}
        for port in _ports(container)
    ]
    if container.probe == "grpc":
        ports[0]["appProtocol"] = "grpc"
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": container.name, "labels": _labels(container)},
        "spec": {"selector": {"app.kubernetes.io/name": container.name}, "ports": ports},
    }


def pdb(container: Container) -> dict[str, Any]:
    """At most one replica of an engine down at a time (never blocks a one-replica drain)."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": container.name, "labels": _labels(container)},
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": {"app.kubernetes.io/name": container.name}},
        },
    }


def hpa(container: Container) -> dict[str, Any]:
    """The engine Deployment's HPA: `services.launcher.hpa.hpa_for` of its model's `scaling`
    block, or of bounds from the entry's `replicas` and the defaults above when it has none."""
    entry = container.model
    assert entry is not None, "only engines are autoscaled"
    scaling = entry.scaling or Scaling(
        min_replicas=max(entry.replicas, 1),
        max_replicas=max(entry.replicas, DEFAULT_MAX_REPLICAS),
        target_requests=DEFAULT_TARGET_REQUESTS,
        scale_down_delay=DEFAULT_SCALE_DOWN_DELAY,
    )
    document = hpa_for(replace(entry, scaling=scaling), deployment=container.name)
    document["metadata"]["labels"] = _labels(container)
    return document


def control_plane_access() -> list[dict[str, Any]]:
    """The control plane's ServiceAccount and its right to list and watch EndpointSlices."""
    name = "control-plane"
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": name},
            "rules": [
                {
                    "apiGroups": ["discovery.k8s.io"],
                    "resources": ["endpointslices"],
                    "verbs": ["get", "list", "watch"],
                }
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name}],
        },
    ]


def model_cache(model_names: list[str]) -> list[dict[str, Any]]:
    """The PVC engines read models from, and the Job that builds them into it (once)."""
    claim = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": PVC},
        # ReadWriteMany: engines on several nodes read it while the Job may still write.
        "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "20Gi"}}},
    }
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "models"},
        "spec": {
            "backoffLimit": 3,
            "template": {
                "spec": {
                    "restartPolicy": "OnFailure",
                    "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "fsGroup": 1000},
                    "containers": [
                        {
                            "name": "models",
                            "image": "hfmesh/models:latest",
                            "args": ["build", "--only", *model_names],
                            "env": [{"name": "HFMESH_CACHE_DIR", "value": MODELS_DIR}],
                            "volumeMounts": [{"name": "models", "mountPath": MODELS_DIR}],
                            "resources": {
                                "requests": {"cpu": "1", "memory": "2Gi"},
                                "limits": {"memory": "6Gi"},
                            },
                        }
                    ],
                    "volumes": [{"name": "models", "persistentVolumeClaim": {"claimName": PVC}}],
                }
            },
        },
    }
    return [claim, job]
