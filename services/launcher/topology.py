"""The containers of a mesh: one per service, as compose and Kubernetes run it.

Both deployments are generated from the same plan of `deploy/models.yaml`
(`services.launcher.manifests`): one tokenizer, one engine container per
(model, backend) — per replica too in compose, where a replica is its own
service; a Deployment's `replicas` in Kubernetes —, the control plane and the
gateway. Every container of a kind listens on the same port (each has its own
network namespace), so a service is reached at `NAME:PORT` in both: compose's
service-name DNS and a Kubernetes Service of the same name in the namespace.

The planned model list the services read (`services.common.model_list`) is
written with container paths and those `NAME:PORT` endpoints; the same file is
mounted in compose and becomes the Kubernetes ConfigMap. Container paths: a
built-in model at `/models/<model>` on the model volume; a remote source
(`hf://`, `s3://`, `gs://`, `https://`) at `/models/sources/<cache name>`, where
the storage initializer (`python -m services.models fetch`) writes it — compose's
`models` service, a Kubernetes init container; a `pvc://claim/path` at
`/mnt/pvc/claim/path`, the claim mounted read-only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from services.common.model_list import Endpoints, MeshPlan, ModelEntry
from services.common.model_source import DEFAULT_PVC_ROOT, parse_source
from services.launcher.plan import ENGINE_MODULES, engine_args

#: Where the model volume is mounted, and where the planned list is mounted.
MODELS_DIR = "/models"
SOURCES_DIR = f"{MODELS_DIR}/sources"
MESH_FILE = "/etc/hfmesh/models.yaml"

GATEWAY_PORT = 8080
TOKENIZER_PORT = 50051
ENGINE_PORT = 8081
METRICS_PORT = 9090
CONTROL_PLANE_PORT = 18000
#: The control plane address every service is given (`HFMESH_CONTROL_PLANE`).
CONTROL_PLANE_ADDRESS = f"control-plane:{CONTROL_PLANE_PORT}"

#: Image name per engine backend and device (`hfmesh/<image>`).
ENGINE_IMAGES = {
    ("huggingface", "cpu"): "engine-hf-cpu",
    ("huggingface", "cuda"): "engine-hf-cuda",
    ("vllm", "cpu"): "engine-vllm-cpu",
    ("vllm", "cuda"): "engine-vllm-cuda",
}
#: Short name prefix of an engine container per backend (`hf-<model>`, `vllm-<model>`).
ENGINE_PREFIX = {"huggingface": "hf", "vllm": "vllm"}


@dataclass
class Container:
    """One service container: `python -m module *args`, ready when `probe` says so on `port`."""

    name: str
    role: str  # gateway | tokenizer | control-plane | huggingface | vllm
    image: str  # image name without registry or tag; the CPU variant for engines
    module: str
    args: list[str]
    port: int
    probe: str = "grpc"  # "grpc": grpc.health.v1; "http": GET /v2/health/ready
    metrics_port: int | None = None
    model: ModelEntry | None = None
    mounts_models: bool = True
    environment: dict[str, str] = field(default_factory=dict)
    #: (remote source, container folder) pairs to fetch before this container starts.
    fetches: list[tuple[str, str]] = field(default_factory=list)
    #: `pvc://` volume claims this container reads models from.
    claims: list[str] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"{self.name}:{self.port}"

    @property
    def registers(self) -> bool:
        """Whether it registers with the control plane itself (the tokenizer and the engines)."""
        return self.role not in ("gateway", "control-plane") and bool(
            self.environment.get("HFMESH_CONTROL_PLANE")
        )

    @property
    def reads_mesh(self) -> bool:
        """Whether the planned model list is mounted (engines take their model as flags)."""
        return MESH_FILE in self.args

    @property
    def healthcheck(self) -> list[str]:
        """The command that probes this container from inside it (compose, `podman healthcheck`)."""
        return ["python", "-m", "services.common.healthcheck", self.probe, str(self.port)]


def container_source(written: str | None, model_name: str | None) -> str:
    """Where a model (or adapter) written as `model:` or `source:` is inside a container."""
    if model_name:
        return f"{MODELS_DIR}/{model_name}"
    source = parse_source(str(written))
    if source.remote:
        return f"{SOURCES_DIR}/{source.cache_name()}"
    if source.kind == "pvc":
        return f"{DEFAULT_PVC_ROOT}/{source.key}".rstrip("/")
    return source.location


def _fetches(entry: ModelEntry, *, adapters: bool) -> list[tuple[str, str]]:
    pairs = [(entry.storage_uri, entry.source)]
    if adapters:
        pairs += [(a.storage_uri, a.source) for a in entry.adapters]
    return [(uri, folder) for uri, folder in pairs if uri]


def _claims(entry: ModelEntry, *, adapters: bool) -> list[str]:
    folders = [entry.source, *(a.source for a in entry.adapters if adapters)]
    prefix = f"{DEFAULT_PVC_ROOT}/"
    return [f.removeprefix(prefix).split("/")[0] for f in folders if f.startswith(prefix)]


def engine_name(entry: ModelEntry, backend: str, replica: int | None = None) -> str:
    suffix = "" if replica is None else f"-{replica}"
    return f"{ENGINE_PREFIX[backend]}-{entry.name}{suffix}"


def _mesh_service(name: str, port: int, **options: Any) -> Container:
    """A service that reads the planned list: gateway, tokenizer, control plane. All but the
    gateway (`/metrics` on its HTTP port) export metrics on `METRICS_PORT`."""
    module = f"services.{name.replace('-', '_')}"
    args = ["--host", "0.0.0.0", "--port", str(port), "--model_list", MESH_FILE]
    if name != "gateway":
        args += ["--metrics_port", str(METRICS_PORT)]
        options.setdefault("metrics_port", METRICS_PORT)
    return Container(name, name, name, module, args, port, **options)


def _engine(entry: ModelEntry, backend: str, replica: int | None, **options: Any) -> Container:
    args = [
        *engine_args(entry, backend),
        *("--host", "0.0.0.0", "--port", str(ENGINE_PORT), "--metrics_port", str(METRICS_PORT)),
    ]
    name = engine_name(entry, backend, replica)
    image = ENGINE_IMAGES[(backend, "cpu")]
    return Container(name, backend, image, ENGINE_MODULES[backend], args, ENGINE_PORT, **options)


def mesh_containers(plan: MeshPlan, *, per_replica: bool) -> list[Container]:
    """The containers of `plan` (its entries' sources already container paths); fills endpoints.

    `per_replica`: one engine container per replica (compose) or one per (model, backend),
    scaled by its `replicas` (Kubernetes).
    """
    environment = {"HFMESH_CONTROL_PLANE": CONTROL_PLANE_ADDRESS}
    control_plane = _mesh_service("control-plane", CONTROL_PLANE_PORT, mounts_models=False)
    tokenizer = _mesh_service("tokenizer", TOKENIZER_PORT, environment=environment)
    engines: list[Container] = []
    for entry in plan.models:
        endpoints = Endpoints(tokenizer=[tokenizer.address])
        for backend in entry.backends:
            replicas = list(range(entry.replicas)) if per_replica and entry.replicas > 1 else [None]
            for replica in replicas:
                engine = _engine(
                    entry,
                    backend,
                    replica,
                    metrics_port=METRICS_PORT,
                    model=entry,
                    environment=environment,
                    fetches=_fetches(entry, adapters=backend == "vllm"),
                    claims=_claims(entry, adapters=backend == "vllm"),
                )
                engines.append(engine)
                endpoints.engines.setdefault(backend, []).append(engine.address)
        plan.endpoints[entry.name] = endpoints
        # The tokenizer reads every model's tokenizer files (not the adapters').
        tokenizer.fetches += _fetches(entry, adapters=False)
        tokenizer.claims += _claims(entry, adapters=False)
    tokenizer.claims = list(dict.fromkeys(tokenizer.claims))
    gateway = _mesh_service(
        "gateway", GATEWAY_PORT, probe="http", mounts_models=False, environment=environment
    )
    return [control_plane, tokenizer, *engines, gateway]
