"""The tokenizer service's settings: KServe's tokenizer flags plus the models to serve."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import Field, field_validator

from services.common.engine import Task
from services.common.errors import InvalidArgument
from services.common.model_list import load_model_list
from services.common.settings import TokenizerFlags, metrics_port_field


class TokenizerSettings(TokenizerFlags):
    port: int = Field(50051, description="gRPC port (0 picks a free one)")
    model_list: str | None = Field(
        None, description="planned model list (YAML): serve every model whose tokenizer this is"
    )
    model_dir: list[str] = Field(
        default_factory=list, description="model folder(s) holding tokenizer files"
    )
    model_name: list[str] = Field(
        default_factory=list,
        description="served name(s), one per --model_dir (default: folder name)",
    )
    task: list[Task] = Field(
        default_factory=list,
        description="task(s), one per model or one for all (default: from the architecture)",
    )
    predictor_host: str | None = Field(
        None,
        description="host:port of an OIP v2 predictor, or xds:///<service> with "
        "GRPC_XDS_BOOTSTRAP set: serve M as KServe's transformer",
    )
    predictor_protocol: str = Field("grpc-v2", description="protocol of the predictor (grpc-v2)")
    predictor_timeout: float = Field(60.0, description="deadline of each predictor call, seconds")
    workers: int = Field(4, description="threads running tokenizer work")
    metrics_port: int | None = metrics_port_field()

    @field_validator("predictor_protocol")
    @classmethod
    def _grpc_only(cls, value: str) -> str:
        if value != "grpc-v2":
            raise ValueError(f"only grpc-v2 is supported, got '{value}'")
        return value


@dataclass(frozen=True)
class ModelSpec:
    """One model to serve: where its tokenizer is and what it does."""

    name: str
    folder: str
    task: Task | None
    max_model_len: int | None


def _port_of(address: str) -> int | None:
    _, _, port = address.rpartition(":")
    return int(port) if port.isdigit() else None


def model_specs(settings: TokenizerSettings) -> list[ModelSpec]:
    """Models from `--model_dir` flags, or from the model list.

    From a planned model list, a model is served when its endpoints list no
    tokenizer or one on this service's port.
    """
    specs: list[ModelSpec] = []
    dirs, names, tasks = settings.model_dir, settings.model_name, settings.task
    if names and len(names) != len(dirs):
        raise InvalidArgument(f"{len(names)} --model_name for {len(dirs)} --model_dir")
    if len(tasks) > 1 and len(tasks) != len(dirs):
        raise InvalidArgument(
            f"{len(tasks)} --task for {len(dirs)} --model_dir (give one, or one per model)"
        )
    for index, folder in enumerate(dirs):
        name = names[index] if names else Path(folder).expanduser().name
        task = tasks[index] if len(tasks) > 1 else (tasks[0] if tasks else None)
        specs.append(ModelSpec(name, folder, task, settings.max_model_len))
    if settings.model_list:
        plan = load_model_list(settings.model_list)
        for entry in plan.models:
            listed = plan.endpoints[entry.name].tokenizer
            if listed and settings.port not in {_port_of(a) for a in listed}:
                continue
            specs.append(
                ModelSpec(
                    entry.name,
                    entry.source,
                    entry.task,
                    entry.max_model_len or settings.max_model_len,
                )
            )
    if not specs:
        raise InvalidArgument(
            "no model to serve: pass --model_dir (and --model_name) or --model_list"
        )
    seen: set[str] = set()
    for spec in specs:
        if spec.name in seen:
            raise InvalidArgument(f"model '{spec.name}' is given twice")
        seen.add(spec.name)
    return specs
