"""From a model list to the processes of a mesh: which services, which ports, which flags."""

from __future__ import annotations

import sys
from dataclasses import dataclass

from services.common.mesh import Endpoints, MeshPlan, ModelEntry

ENGINE_MODULES = {"vllm": "services.engine_vllm", "huggingface": "services.engine_hf"}


@dataclass
class ProcessSpec:
    """One service process: `python -m module *args --port port`."""

    name: str
    module: str
    args: list[str]
    port: int
    ready: str = "grpc"  # "grpc" health or "http" /v2/health/ready

    def command(self) -> list[str]:
        return [sys.executable, "-m", self.module, *self.args, "--port", str(self.port)]


def engine_args(entry: ModelEntry, backend: str) -> list[str]:
    args = ["--model_dir", entry.source, "--model_name", entry.name, "--task", entry.task.value]
    if entry.max_model_len:
        args += ["--max_model_len", str(entry.max_model_len)]
    if backend == "vllm":
        args += ["--dtype", "auto", *entry.engine_args]
    return args


def plan_processes(
    plan: MeshPlan, *, host: str, base_port: int, mesh_file: str
) -> list[ProcessSpec]:
    """Assign ports; fill `plan.endpoints`; return the tokenizer and engine processes.

    One tokenizer service serves every model; each (model, backend, replica)
    gets its own engine process, as KServe runs one model per predictor.
    """
    port = base_port
    tokenizer = ProcessSpec("tokenizer", "services.tokenizer", ["--model_list", mesh_file], port)
    port += 1
    specs = [tokenizer]
    for entry in plan.models:
        endpoints = Endpoints(tokenizer=[f"{host}:{tokenizer.port}"])
        for backend in entry.backends:
            for replica in range(entry.replicas):
                suffix = f"-{replica}" if entry.replicas > 1 else ""
                spec = ProcessSpec(
                    f"{backend}-{entry.name}{suffix}", ENGINE_MODULES[backend], engine_args(entry, backend), port
                )
                port += 1
                specs.append(spec)
                endpoints.engines.setdefault(backend, []).append(f"{host}:{spec.port}")
        plan.endpoints[entry.name] = endpoints
    return specs


def gateway_process(mesh_file: str, *, host: str, port: int) -> ProcessSpec:
    return ProcessSpec("gateway", "services.gateway", ["--model_list", mesh_file, "--host", host], port, ready="http")
