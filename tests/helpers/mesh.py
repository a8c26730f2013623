"""Integration meshes planned as the launcher plans them, run as real processes.

`model_entry(...)` writes a model-list entry; `running_mesh(entries, folder)` hands them to the
launcher's planner (`plan_processes`: one tokenizer, one engine per model and backend, consecutive
ports; `gateway_process`), writes the model list the services read, starts every process at once
so model loads overlap, waits for each, then starts the gateway. On exit every process tree stops.
"""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai

from services.common.engine import Task
from services.common.model_list import MeshPlan, ModelEntry
from services.launcher.plan import ProcessSpec, gateway_process, plan_processes
from services.launcher.processes import ServiceProcess, free_port, start_service, wait_ready

HOST = "127.0.0.1"


def model_entry(
    name: str,
    source: str,
    task: str,
    backend: str = "huggingface",
    *,
    fallback: str | None = None,
    max_model_len: int | None = None,
    engine_args: list[str] | None = None,
    tool_parser: str | None = None,
) -> ModelEntry:
    """A model-list entry on `backend` as given (the test decides; no vLLM registry lookup)."""
    return ModelEntry(
        name=name,
        source=source,
        task=Task(task),
        backend=backend,
        fallback=fallback,
        max_model_len=max_model_len,
        engine_args=engine_args or [],
        tool_parser=tool_parser,
    )


@contextmanager
def smollm_on_engines(
    folder: str, models: dict[str, str], mesh_folder: Path, **fields: Any
) -> Iterator[openai.OpenAI]:
    """SmolLM2 (`folder`) served under each name of `models` on its backend (context 1024,
    entry `fields` added) by one mesh, and an `openai` client of its gateway."""
    entries = [
        model_entry(name, folder, "text_generation", backend, max_model_len=1024, **fields)
        for name, backend in models.items()
    ]
    env = {"VLLM_CPU_KVCACHE_SPACE": "1"}
    with running_mesh(entries, mesh_folder, env=env, timeout=900) as mesh:
        yield openai.OpenAI(
            base_url=f"{mesh['gateway'].url}/openai/v1",
            api_key="unused",
            max_retries=0,
            timeout=600,
        )


@dataclass
class Mesh:
    """The started processes by planned name: "tokenizer", "<backend>-<model>", "gateway"."""

    plan: MeshPlan
    specs: dict[str, ProcessSpec]
    metrics_ports: dict[str, int]
    env: dict[str, str] | None
    log_dir: Path
    services: dict[str, ServiceProcess] = dataclasses.field(default_factory=dict)

    def __getitem__(self, name: str) -> ServiceProcess:
        return self.services[name]

    def engine(self, model: str, backend: str | None = None) -> ServiceProcess:
        """The engine process of `model` on `backend` (default: its first backend)."""
        engines = self.plan.endpoints[model].engines
        address = engines[backend or next(iter(engines))][0]
        return next(s for s in self.services.values() if s.address == address)

    def restart(self, name: str, timeout: float = 300.0) -> ServiceProcess:
        """Start a planned process again (its port, its flags) and wait until it serves."""
        self.services[name].stop()
        service = self.start(name)
        wait_ready(service, self.specs[name].ready, timeout)
        return service

    def start(self, name: str) -> ServiceProcess:
        """Start a planned process on its planned port; does not wait for it."""
        spec = self.specs[name]
        service = start_service(
            spec.module,
            spec.args,
            name=name,
            port=spec.port,
            env=self.env,
            ready="none",
            log_dir=self.log_dir,
        )
        if name in self.metrics_ports:
            service.extra_ports["metrics"] = self.metrics_ports[name]
        self.services[name] = service
        return service


def _port_taken(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return True
    return False


def free_port_run(count: int) -> int:
    """A base port whose next `count` ports are free (a launcher's `--base_port`)."""
    for _ in range(20):
        base = free_port()
        if not any(_port_taken(port) for port in range(base, base + count)):
            return base
    raise RuntimeError("no run of free ports")


def _plan(plan: MeshPlan, mesh_file: Path) -> list[ProcessSpec]:
    """`plan_processes` takes consecutive ports from a base: pick a base whose run is free."""
    for _ in range(20):
        specs = plan_processes(plan, host=HOST, base_port=free_port(), mesh_file=str(mesh_file))
        if not any(_port_taken(spec.port) for spec in specs):
            return specs
    raise RuntimeError("no run of free ports for the mesh")


def _local(spec: ProcessSpec, metrics_port: int | None) -> ProcessSpec:
    """Bind loopback only (the gateway's plan says so already); export metrics if asked."""
    args = list(spec.args)
    if spec.module != "services.gateway":
        args += ["--host", HOST]
    if metrics_port is not None:
        args += ["--metrics_port", str(metrics_port)]
    return dataclasses.replace(spec, args=args)


@contextmanager
def running_mesh(
    models: list[ModelEntry],
    folder: Path,
    *,
    engines_only: bool = False,
    metrics: Collection[str] = (),
    env: dict[str, str] | None = None,
    timeout: float = 300.0,
) -> Iterator[Mesh]:
    """Start the planned mesh (or only its engines) in `folder`; stop it all on exit.

    `metrics`: the models whose engines export `/metrics`, and "tokenizer" for the tokenizer's.
    """
    plan = MeshPlan(models)
    mesh_file = folder / "mesh.yaml"
    specs = _plan(plan, mesh_file)
    mesh_file.write_text(plan.to_yaml())
    if engines_only:
        specs = [spec for spec in specs if spec.module != "services.tokenizer"]
    else:
        specs.append(gateway_process(str(mesh_file), host=HOST, port=free_port()))
    exporting = {
        a
        for m in metrics
        if m in plan.endpoints
        for pool in plan.endpoints[m].engines.values()
        for a in pool
    }
    metrics_ports = {
        s.name: free_port() for s in specs if f"{HOST}:{s.port}" in exporting or s.name in metrics
    }
    local = {s.name: _local(s, metrics_ports.get(s.name)) for s in specs}
    mesh = Mesh(plan, local, metrics_ports, env, folder)
    try:
        grpc_services = [spec.name for spec in specs if spec.ready == "grpc"]
        for name in grpc_services:
            mesh.start(name)
        for name in grpc_services:
            wait_ready(mesh[name], "grpc", timeout)
        if not engines_only:
            wait_ready(mesh.start("gateway"), "http", 60)
        yield mesh
    finally:
        for service in mesh.services.values():
            service.stop()
