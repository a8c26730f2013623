"""The planned mesh model list: the YAML the launcher writes and the gateway and
tokenizer read for routing.

Every entry is planned: its source folder, task, backend and endpoints are
written out, so reading it needs no model folder, no model building and no vLLM
(the gateway image has none of them). Planning a hand-written list (a
`model:` name built into a folder, a task inferred, `backend: auto` resolved)
is the launcher's job: `services.launcher.plan`.

```yaml
models:
  - name: smollm2                     # the name clients use
    source: /path/to/hf/folder        # the model folder
    task: text_generation
    backend: vllm                     # vllm | huggingface: the engine tried first
    fallback: huggingface             # optional: serve from HF too, used while vLLM is not ready
    max_model_len: 2048               # optional
    replicas: 1
    engine_args: ["--enforce-eager"]  # optional: extra engine flags (vLLM)
    endpoints:
      tokenizer: ["127.0.0.1:50051"]
      vllm: ["127.0.0.1:50052"]
      huggingface: ["127.0.0.1:50053"]
```
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from services.common.engine import Task
from services.common.errors import InvalidArgument

#: The engines an entry can be served by.
ENGINE_BACKENDS = ("vllm", "huggingface")
_PLANNED_KEYS = ("source", "task", "backend", "endpoints")


@dataclass
class ModelEntry:
    name: str
    source: str
    task: Task
    backend: str = "huggingface"
    fallback: str | None = None
    max_model_len: int | None = None
    replicas: int = 1
    engine_args: list[str] = field(default_factory=list)

    @property
    def backends(self) -> list[str]:
        """Backends in order of preference: the planned one, then the fallback."""
        order = [self.backend]
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
        models = [_entry_dict(m, self.endpoints.get(m.name)) for m in self.models]
        return yaml.safe_dump({"models": models}, sort_keys=False)


def model_entry(raw: dict[str, Any], *, source: str, task: Task, backend: str) -> ModelEntry:
    """An entry from its YAML fields, with the three a planner decides given."""
    entry = ModelEntry(
        name=raw["name"],
        source=source,
        task=task,
        backend=backend,
        fallback=raw.get("fallback"),
        max_model_len=raw.get("max_model_len"),
        replicas=int(raw.get("replicas", 1)),
        engine_args=[str(a) for a in raw.get("engine_args", [])],
    )
    if entry.fallback not in (None, "huggingface"):
        raise InvalidArgument(f"model '{entry.name}': fallback can only be 'huggingface'")
    return entry


def model_dicts(document: Any) -> list[dict[str, Any]]:
    """The entries of a model-list document, each named once."""
    models = document.get("models") if isinstance(document, dict) else None
    if not models:
        raise InvalidArgument("the model list has no 'models'")
    seen: set[str] = set()
    for raw in models:
        name = raw.get("name")
        if not name:
            raise InvalidArgument("every model in the model list needs a 'name'")
        if name in seen:
            raise InvalidArgument(f"model '{name}' is listed twice")
        seen.add(name)
    return models


def _read_document(path: str | Path) -> Any:
    try:
        return yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as error:
        raise InvalidArgument(f"cannot read model list {path}: {error}") from None


def read_model_list(path: str | Path) -> list[dict[str, Any]]:
    """The entries of a model-list file as written, planned or not."""
    return model_dicts(_read_document(path))


def _planned_entry(raw: dict[str, Any]) -> tuple[ModelEntry, Endpoints]:
    name = raw["name"]
    missing = [key for key in _PLANNED_KEYS if not raw.get(key)]
    if missing:
        raise InvalidArgument(
            f"model '{name}' is not planned (no {', '.join(missing)}); "
            "`python -m services.launcher` plans a model list and writes the one services read"
        )
    if raw["backend"] not in ENGINE_BACKENDS:
        raise InvalidArgument(
            f"model '{name}': a planned backend is {' or '.join(ENGINE_BACKENDS)}, "
            f"got '{raw['backend']}'"
        )
    entry = model_entry(
        raw, source=str(raw["source"]), task=Task(raw["task"]), backend=raw["backend"]
    )
    endpoints = raw["endpoints"]
    engines = {k: list(v) for k, v in endpoints.items() if k in ENGINE_BACKENDS}
    return entry, Endpoints(tokenizer=list(endpoints.get("tokenizer", [])), engines=engines)


def _entry_dict(entry: ModelEntry, endpoints: Endpoints | None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": entry.name,
        "source": entry.source,
        "task": entry.task.value,
        "backend": entry.backend,
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


def parse_model_list(document: Any) -> MeshPlan:
    """A planned model list; an entry that is not planned is an error that says so."""
    plan = MeshPlan(models=[])
    for raw in model_dicts(document):
        entry, endpoints = _planned_entry(raw)
        plan.models.append(entry)
        plan.endpoints[entry.name] = endpoints
    return plan


def load_model_list(path: str | Path) -> MeshPlan:
    return parse_model_list(_read_document(path))
