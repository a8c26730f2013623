"""The mesh model list: one YAML file from which the launcher, compose and k8s
manifests are generated, and which the gateway and tokenizer read for routing.

```yaml
models:
  - name: smollm2                     # the name clients use
    model: smollm2-135m-instruct      # a model of services.models, or
    # source: /path/to/hf/folder      # any local Hugging Face folder
    task: text_generation             # optional: inferred from the architecture (KServe rules)
    backend: auto                     # auto | vllm | huggingface
    fallback: huggingface             # optional: serve from HF too, used while vLLM is not ready
    max_model_len: 2048
    replicas: 1
    endpoints:                        # optional: filled in by the launcher when absent
      tokenizer: ["127.0.0.1:50051"]
      vllm: ["127.0.0.1:50061"]
      huggingface: ["127.0.0.1:50062"]
```
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from services.common.engine import Task
from services.common.errors import InvalidArgument

BACKENDS = ("auto", "vllm", "huggingface")

# Architecture suffix → task, in the order KServe's Hugging Face runtime checks them.
_SUFFIX_TASKS = (
    ("ForCausalLM", Task.TEXT_GENERATION),
    ("ForConditionalGeneration", Task.TEXT2TEXT_GENERATION),
    ("ForSeq2SeqLM", Task.TEXT2TEXT_GENERATION),
    ("ForMaskedLM", Task.FILL_MASK),
    ("ForTokenClassification", Task.TOKEN_CLASSIFICATION),
    ("ForSequenceClassification", Task.SEQUENCE_CLASSIFICATION),
)


def task_from_architecture(architecture: str) -> Task:
    """KServe's inference: by suffix; a bare encoder (`BertModel`) embeds."""
    for suffix, task in _SUFFIX_TASKS:
        if architecture.endswith(suffix):
            return task
    if architecture.endswith("Model"):
        return Task.TEXT_EMBEDDING
    raise InvalidArgument(f"cannot infer a task for architecture '{architecture}'; pass --task")


def read_architecture(folder: str | Path) -> str:
    config = Path(folder) / "config.json"
    try:
        architectures = json.loads(config.read_text()).get("architectures") or []
    except (OSError, json.JSONDecodeError) as error:
        raise InvalidArgument(f"cannot read {config}: {error}") from None
    if not architectures:
        raise InvalidArgument(f"{config} names no architecture")
    return architectures[0]


@dataclass
class ModelEntry:
    name: str
    source: str
    task: Task
    backend: str = "auto"
    resolved_backend: str = "huggingface"
    fallback: str | None = None
    max_model_len: int | None = None
    replicas: int = 1
    tokenizer: bool = True
    engine_args: list[str] = field(default_factory=list)

    @property
    def backends(self) -> list[str]:
        """Backends in order of preference: the resolved one, then the fallback."""
        order = [self.resolved_backend]
        if self.fallback and self.fallback not in order:
            order.append(self.fallback)
        return order


@dataclass
class Endpoints:
    tokenizer: list[str] = field(default_factory=list)
    engines: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class MeshPlan:
    models: list[ModelEntry]
    endpoints: dict[str, Endpoints] = field(default_factory=dict)

    def model(self, name: str) -> ModelEntry:
        for entry in self.models:
            if entry.name == name:
                return entry
        raise KeyError(name)

    def to_yaml(self) -> str:
        return yaml.safe_dump({"models": [_entry_dict(m, self.endpoints.get(m.name)) for m in self.models]}, sort_keys=False)


def resolve_backend(requested: str, task: Task, architecture: str, *, vllm_available: bool | None = None) -> str:
    """DESIGN.md §5: `auto` → vLLM for a generative architecture vLLM supports, else HF."""
    if requested not in BACKENDS:
        raise InvalidArgument(f"backend must be one of {', '.join(BACKENDS)}, got '{requested}'")
    if requested == "huggingface":
        return requested
    supported = task.is_generative and _vllm_supports(architecture, vllm_available)
    if requested == "vllm" and not supported:
        why = "vLLM is not installed" if vllm_available is False or not _vllm_importable() else (
            f"vLLM's registry has no generative architecture '{architecture}'"
            if task.is_generative else f"task {task.value} is served by the HF engine"
        )
        raise InvalidArgument(f"--backend vllm cannot serve this model: {why}; use --backend huggingface or auto")
    return "vllm" if supported else "huggingface"


def _vllm_importable() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def _vllm_supports(architecture: str, vllm_available: bool | None) -> bool:
    if vllm_available is False or not _vllm_importable():
        return False
    from services.engine_vllm.registry import vllm_supports

    return vllm_supports(architecture)


def _entry_from_dict(
    raw: dict[str, Any], *, vllm_available: bool | None, resolve: bool = True
) -> tuple[ModelEntry, Endpoints | None]:
    name = raw.get("name")
    if not name:
        raise InvalidArgument("every model in the model list needs a 'name'")
    if raw.get("endpoints") and raw.get("task") and raw.get("backend") in ("vllm", "huggingface"):
        return _planned_entry(name, raw)
    source = raw.get("source")
    if source is None and raw.get("model"):
        from services.models.cache import ensure_model

        source = str(ensure_model(raw["model"]))
    if not source:
        raise InvalidArgument(f"model '{name}': give 'model' (a built-in model) or 'source' (a folder)")
    source = os.path.expanduser(str(source))
    architecture = read_architecture(source)
    task = Task(raw["task"]) if raw.get("task") else task_from_architecture(architecture)
    backend = raw.get("backend", "auto")
    entry = ModelEntry(
        name=name,
        source=source,
        task=task,
        backend=backend,
        resolved_backend=(
            resolve_backend(backend, task, architecture, vllm_available=vllm_available) if resolve else backend
        ),
        fallback=raw.get("fallback"),
        max_model_len=raw.get("max_model_len"),
        replicas=int(raw.get("replicas", 1)),
        engine_args=[str(a) for a in raw.get("engine_args", [])],
    )
    if entry.fallback not in (None, "huggingface"):
        raise InvalidArgument(f"model '{name}': fallback can only be 'huggingface'")
    endpoints = raw.get("endpoints")
    if endpoints is None:
        return entry, None
    engines = {k: list(v) for k, v in endpoints.items() if k in ("vllm", "huggingface")}
    return entry, Endpoints(tokenizer=list(endpoints.get("tokenizer", [])), engines=engines)


def _planned_entry(name: str, raw: dict[str, Any]) -> tuple[ModelEntry, Endpoints]:
    """An entry the launcher already planned: no files to read, no vLLM import (the gateway image has neither)."""
    entry = ModelEntry(
        name=name,
        source=str(raw.get("source", "")),
        task=Task(raw["task"]),
        backend=raw["backend"],
        resolved_backend=raw["backend"],
        fallback=raw.get("fallback"),
        max_model_len=raw.get("max_model_len"),
        replicas=int(raw.get("replicas", 1)),
        engine_args=[str(a) for a in raw.get("engine_args", [])],
    )
    endpoints = raw["endpoints"]
    engines = {k: list(v) for k, v in endpoints.items() if k in ("vllm", "huggingface")}
    return entry, Endpoints(tokenizer=list(endpoints.get("tokenizer", [])), engines=engines)


def _entry_dict(entry: ModelEntry, endpoints: Endpoints | None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": entry.name,
        "source": entry.source,
        "task": entry.task.value,
        "backend": entry.resolved_backend,
    }
    for key in ("fallback", "max_model_len"):
        if getattr(entry, key) is not None:
            out[key] = getattr(entry, key)
    out["replicas"] = entry.replicas
    if entry.engine_args:
        out["engine_args"] = entry.engine_args
    if endpoints is not None:
        out["endpoints"] = {"tokenizer": endpoints.tokenizer, **endpoints.engines}
    return out


def parse_mesh(document: dict[str, Any], *, vllm_available: bool | None = None, resolve: bool = True) -> MeshPlan:
    """`resolve=False` keeps each entry's backend as written (services that only need tasks and sources)."""
    models = document.get("models") if isinstance(document, dict) else None
    if not models:
        raise InvalidArgument("the model list has no 'models'")
    plan = MeshPlan(models=[])
    for raw in models:
        entry, endpoints = _entry_from_dict(raw, vllm_available=vllm_available, resolve=resolve)
        if any(m.name == entry.name for m in plan.models):
            raise InvalidArgument(f"model '{entry.name}' is listed twice")
        plan.models.append(entry)
        if endpoints is not None:
            plan.endpoints[entry.name] = endpoints
    return plan


def load_mesh(path: str | Path, *, vllm_available: bool | None = None, resolve: bool = True) -> MeshPlan:
    try:
        document = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as error:
        raise InvalidArgument(f"cannot read model list {path}: {error}") from None
    return parse_mesh(document, vllm_available=vllm_available, resolve=resolve)
