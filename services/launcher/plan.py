"""From a hand-written model list to the processes of a mesh: which models, which
engines, which ports, which flags.

The list the launcher reads (`deploy/models.yaml`) may leave out what a planner
decides; the planned list it writes for the services
(`services.common.model_list`) has it all:

```yaml
models:
  - name: smollm2                     # the name clients use
    model: smollm2-135m-instruct      # a model of services.models (built once), or
    # source: /path/to/hf/folder      # a folder, hf://org/name[@rev], s3://, gs://, https://
                                      # (fetched once: docs/model-sources.md) or pvc://
    task: text_generation             # optional: inferred from the architecture (KServe rules)
    backend: auto                     # auto | vllm | huggingface
    fallback: huggingface             # optional: serve from HF too, used while vLLM is not ready
    max_model_len: 2048
    replicas: 1
    scaling: {min_replicas: 0, max_replicas: 3, target_requests: 8}  # optional: autoscaling
    engine_args: []                   # optional: extra flags for the vLLM engine
    adapters: [{name: my-lora, source: s3://bucket/lora}]  # optional: LoRA adapters (vLLM)
    tool_parser: hermes               # optional: hermes | pythonic, lets chat requests use tools
    engine_group: shared              # optional: the HF engine process it shares
```

Engine groups (docs/engine-groups.md): the HF engine models of one `engine_group` are served
by one engine process (`python -m services.engine_hf --model_list MESH --models A,B,...`),
since torch and transformers cost each process ~0.5 GB before its first model. Planning puts
every HF-engine model without an `engine_group` of its own, one replica and no `scaling` into
the group `default_group` (the launcher's: `shared`; none with `--engine_per_model`); a model
given a group of its own keeps its own process. The planned list records each model's group,
so the launcher and its planning child assign the same ports.

Planning builds `model:` names (torch, once per machine), fetches remote sources
(`services.models.fetch`, once per machine), reads each folder's
architecture and resolves `auto` with vLLM's own model registry (DESIGN.md §5). Those import
torch and vLLM, so the launcher runs planning as a child process,
`python -m services.launcher.plan --model_list RAW --out MESH`, and reads back the planned
list it writes (`services.common.model_list.load_model_list`: no model code): the launcher
itself stays a light supervisor. This module imports nothing heavy at module level;
`plan_processes` and `gateway_process` are pure.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.common.architecture import infer_task, read_architecture
from services.common.engine import Task
from services.common.errors import InvalidArgument
from services.common.model_list import (
    Adapter,
    Endpoints,
    MeshPlan,
    ModelEntry,
    model_entry,
    parse_adapters,
    read_model_list,
)
from services.common.model_source import parse_source
from services.common.tls import TlsConfig
from services.engine_vllm.registry import unsupported_reason
from services.models.cache import ensure_model
from services.models.fetch import FetchError, fetch_source

BACKENDS = ("auto", "vllm", "huggingface")
ENGINE_MODULES = {"vllm": "services.engine_vllm", "huggingface": "services.engine_hf"}
#: The engine group of HF engine models the launcher plans without one (docs/engine-groups.md).
DEFAULT_ENGINE_GROUP = "shared"


def resolve_backend(
    requested: str, task: Task, architecture: str, *, vllm_available: bool | None = None
) -> str:
    """`auto` → vLLM for a generative architecture vLLM's registry has, else HF.

    `vllm_available=False` keeps vLLM out (the launcher's `--no_vllm`).
    """
    if requested not in BACKENDS:
        raise InvalidArgument(f"backend must be one of {', '.join(BACKENDS)}, got '{requested}'")
    if requested == "huggingface":
        return requested
    if vllm_available is False:
        why: str | None = "vLLM is not installed"
    elif not task.is_generative:
        why = f"task {task.value} is served by the HF engine"
    else:
        why = unsupported_reason(architecture)
    if why is None:
        return "vllm"
    if requested == "vllm":
        raise InvalidArgument(
            f"--backend vllm cannot serve this model: {why}; use --backend huggingface or auto"
        )
    return "huggingface"


def _resolve_source(name: str, written: str, *, fetch: bool) -> tuple[str, str | None]:
    """A `source:` as a local path, fetched first when remote (`services.models.fetch`) and
    `fetch` is on, and the remote source itself (the entry's `storage_uri`; None if local)."""
    try:
        parsed = parse_source(written)
    except InvalidArgument as error:
        raise InvalidArgument(f"model '{name}': {error.message}") from None
    if not parsed.remote:
        return parsed.location, None
    if not fetch:
        return parsed.uri, parsed.uri
    try:
        return str(fetch_source(parsed)), parsed.uri
    except FetchError as error:
        raise InvalidArgument(f"model '{name}': {error}") from None


def plan_entry(
    raw: dict[str, Any],
    *,
    vllm_available: bool | None = None,
    fetch: bool = True,
    default_group: str | None = None,
) -> ModelEntry:
    """One hand-written entry, planned: its folder (built if named by `model:`, fetched if its
    `source:` is remote), task and backend.

    `fetch=False` (manifests, whose containers fetch for themselves): a `source:` that is not
    a local folder, with its `task` and a concrete `backend` written, is planned without
    reading it; one that leaves either to inference is fetched to read its architecture.
    """
    name = raw["name"]
    source = raw.get("source")
    if source is None and raw.get("model"):
        source = str(ensure_model(raw["model"]))
    if not source:
        raise InvalidArgument(
            f"model '{name}': give 'model' (a built-in model) or 'source' (a folder, "
            "hf://, s3://, gs://, https:// or pvc:// source)"
        )
    backend = raw.get("backend", "auto")
    unread = not fetch and bool(raw.get("task")) and backend in ENGINE_MODULES
    unread = unread and raw.get("source") is not None
    if unread:
        try:
            unread = parse_source(str(source)).kind != "local"
        except InvalidArgument as error:
            raise InvalidArgument(f"model '{name}': {error.message}") from None
    source, storage_uri = _resolve_source(name, str(source), fetch=not unread)
    adapters = plan_adapters(name, raw.get("adapters"), fetch=fetch)
    if unread:
        task = Task(raw["task"])
    else:
        architecture = read_architecture(source)
        task = infer_task([architecture], Task(raw["task"]) if raw.get("task") else None)
        backend = resolve_backend(backend, task, architecture, vllm_available=vllm_available)
    entry = model_entry(raw, source=source, task=task, backend=backend, adapters=adapters)
    entry.storage_uri = storage_uri
    if raw.get("engine_group") is not None and "huggingface" not in entry.backends:
        raise InvalidArgument(
            f"model '{name}': engine_group groups HF engine processes, and this model is planned "
            f"on {entry.backend} only"
        )
    groupable = entry.replicas == 1 and entry.scaling is None and "huggingface" in entry.backends
    if "engine_group" not in raw and default_group and groupable:
        entry.engine_group = default_group
    if adapters and "vllm" not in entry.backends:
        raise InvalidArgument(
            f"model '{name}': adapters are served by the vLLM engine, and this model is planned "
            f"on {entry.backend}"
        )
    return entry


def plan_adapters(name: str, written: Any, *, fetch: bool) -> list[Adapter]:
    """A model's `adapters:` (LoRA: `{name, source}` each), their sources resolved as the
    model's own are."""
    adapters = []
    for raw in parse_adapters(name, written):
        path, uri = _resolve_source(f"{name}' adapter '{raw['name']}", raw["source"], fetch=fetch)
        adapters.append(Adapter(name=raw["name"], source=path, storage_uri=uri))
    return adapters


def plan_models(
    entries: list[dict[str, Any]],
    *,
    vllm_available: bool | None = None,
    fetch: bool = True,
    default_group: str | None = None,
) -> MeshPlan:
    """Entries as `model_dicts` returns them, planned (`plan_processes` assigns endpoints)."""
    return MeshPlan(
        models=[
            plan_entry(raw, vllm_available=vllm_available, fetch=fetch, default_group=default_group)
            for raw in entries
        ]
    )


def plan_model_list(path: str | Path, *, vllm_available: bool | None = None) -> MeshPlan:
    return plan_models(read_model_list(path), vllm_available=vllm_available)


def select_models(entries: list[dict[str, Any]], names: list[str]) -> list[dict[str, Any]]:
    """The entries named in `names` (all when empty), in list order; an unknown name is an error."""
    if not names:
        return entries
    unknown = sorted(set(names) - {raw["name"] for raw in entries})
    if unknown:
        raise InvalidArgument(f"not in the model list: {', '.join(unknown)}")
    return [raw for raw in entries if raw["name"] in names]


@dataclass
class ProcessSpec:
    """One service process: `python -m module *args --port port`."""

    name: str
    module: str
    args: list[str]
    port: int
    ready: str = "grpc"  # "grpc" health or "http" /v2/health/ready
    env: dict[str, str] = field(default_factory=dict)  # added to the launcher's environment
    model: str | None = None  # an engine's model and backend
    backend: str | None = None
    tls: TlsConfig | None = None  # the mesh's TLS (passed as HFMESH_TLS_*; None: plain)
    group: list[str] = field(default_factory=list)  # a group engine's models (no `model`)


def engine_args(entry: ModelEntry, backend: str) -> list[str]:
    args = ["--model_dir", entry.source, "--model_name", entry.name, "--task", entry.task.value]
    if entry.max_model_len:
        args += ["--max_model_len", str(entry.max_model_len)]
    if backend == "vllm":
        args += ["--dtype", "auto", *entry.engine_args]
        for adapter in entry.adapters:
            args += ["--lora-modules", f"{adapter.name}={adapter.source}"]
    return args


def plan_processes(
    plan: MeshPlan, *, host: str, base_port: int, mesh_file: str
) -> list[ProcessSpec]:
    """Assign ports; fill `plan.endpoints`; return the tokenizer and engine processes.

    One tokenizer service serves every model. Each (model, backend, replica) gets its own
    engine process, as KServe runs one model per predictor, except the HF engine models of an
    `engine_group`: one process serves them all, on the port of the group's first model.
    """
    port = base_port
    tokenizer = ProcessSpec("tokenizer", "services.tokenizer", ["--model_list", mesh_file], port)
    port += 1
    specs = [tokenizer]
    groups: dict[str, ProcessSpec] = {}
    for entry in plan.models:
        endpoints = Endpoints(tokenizer=[f"{host}:{tokenizer.port}"])
        for backend in entry.backends:
            if backend == "huggingface" and entry.engine_group:
                group = groups.get(entry.engine_group)
                if group is None:
                    group = groups[entry.engine_group] = ProcessSpec(
                        f"huggingface-group-{entry.engine_group}",
                        ENGINE_MODULES[backend],
                        ["--model_list", mesh_file, "--models", ""],
                        port,
                        backend=backend,
                    )
                    port += 1
                    specs.append(group)
                group.group.append(entry.name)
                group.args[-1] = ",".join(group.group)
                endpoints.engines.setdefault(backend, []).append(f"{host}:{group.port}")
                continue
            for replica in range(entry.replicas):
                suffix = f"-{replica}" if entry.replicas > 1 else ""
                spec = ProcessSpec(
                    f"{backend}-{entry.name}{suffix}",
                    ENGINE_MODULES[backend],
                    engine_args(entry, backend),
                    port,
                    model=entry.name,
                    backend=backend,
                )
                port += 1
                specs.append(spec)
                endpoints.engines.setdefault(backend, []).append(f"{host}:{spec.port}")
        plan.endpoints[entry.name] = endpoints
    return specs


def with_metrics_ports(
    specs: list[ProcessSpec], base_port: int, free: Callable[[], int]
) -> dict[str, int]:
    """Give each process `--metrics_port`: consecutive from `base_port`, or `free()` ports when
    it is 0; name → port. The gateway is not among them: it serves `/metrics` on its HTTP port.
    """
    ports = {}
    for offset, spec in enumerate(specs):
        port = base_port + offset if base_port else free()
        ports[spec.name] = port
        spec.args = [*spec.args, "--metrics_port", str(port)]
    return ports


def gateway_process(mesh_file: str, *, host: str, port: int) -> ProcessSpec:
    args = ["--model_list", mesh_file, "--host", host]
    return ProcessSpec("gateway", "services.gateway", args, port, ready="http")


def control_plane_process(mesh_file: str, *, host: str, port: int) -> ProcessSpec:
    args = ["--model_list", mesh_file, "--host", host]
    return ProcessSpec("control_plane", "services.control_plane", args, port)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m services.launcher.plan",
        description="Plan a hand-written model list (build `model:` names, infer tasks, resolve "
        "backends, assign ports) and write the planned list the services read.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--model_list", required=True, help="hand-written model list (YAML)")
    parser.add_argument("--out", required=True, help="where to write the planned list (YAML)")
    parser.add_argument("--host", default="127.0.0.1", help="host of the planned endpoints")
    parser.add_argument("--base_port", type=int, default=50051, help="first gRPC port")
    parser.add_argument("--models", default="", help="comma-separated subset of model names")
    parser.add_argument("--no_vllm", action="store_true", help="plan every model on the HF engine")
    parser.add_argument(
        "--engine_per_model",
        action="store_true",
        help="one HF engine process per model, except models given an engine_group",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Fetch progress (services.models.fetch) reaches the launcher's terminal through stderr.
    logging.basicConfig(level=logging.WARNING, format="  %(message)s")
    logging.getLogger("services.models").setLevel(logging.INFO)
    names = [name.strip() for name in args.models.split(",") if name.strip()]
    try:
        entries = select_models(read_model_list(args.model_list), names)
        plan = plan_models(
            entries,
            vllm_available=False if args.no_vllm else None,
            default_group=None if args.engine_per_model else DEFAULT_ENGINE_GROUP,
        )
    except InvalidArgument as error:
        print(f"hfmesh: {error.message}", file=sys.stderr, flush=True)
        return 2
    plan_processes(plan, host=args.host, base_port=args.base_port, mesh_file=args.out)
    out = Path(args.out)
    partial = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    partial.write_text(plan.to_yaml())
    partial.replace(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
