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
    routing: prefix                   # least_loaded | prefix | session (default: prefix for
                                      # generative models, least_loaded for encoders)
    revision_of: chat                 # optional: a revision of the public name `chat` ...
    traffic: 90                       # ... taking this weight of its requests (canary)
    replicas: 1                       # the starting count; within [min, max] when scaling
    scaling:                          # optional: autoscaling, KubeAI's knobs
      min_replicas: 1                 # 0: scaled to zero when idle (the gateway holds requests)
      max_replicas: 3
      target_requests: 8              # in-flight + queued requests per replica
      scale_up_delay: 0               # seconds the higher count must hold before scaling up
      scale_down_delay: 30            # ... the lower count before scaling down
    engine_args: ["--enforce-eager"]  # optional: extra engine flags (vLLM)
    engine_group: shared              # optional: HF engine models of one group share one
                                      # process (the launcher's; docs/engine-groups.md)
    storage_uri: s3://bucket/prefix   # optional: the remote source `source` was fetched from
    adapters:                         # optional: LoRA adapters served with the model (vLLM)
      - {name: my-lora, source: /path/to/adapter, storage_uri: hf://org/adapter}
    tool_parser: hermes               # optional: how the model writes tool calls (hermes |
                                      # pythonic); without it, chat requests with tools are 400
    endpoints:
      tokenizer: ["127.0.0.1:50051"]
      vllm: ["127.0.0.1:50052"]
      huggingface: ["127.0.0.1:50053"]
```
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from services.common.engine import Task
from services.common.errors import InvalidArgument
from services.common.tool_format import TOOL_PARSERS

#: The engines an entry can be served by.
ENGINE_BACKENDS = ("vllm", "huggingface")
#: How the gateway picks among a model's replicas (docs/routing.md).
ROUTING_POLICIES = ("least_loaded", "prefix", "session")
_PLANNED_KEYS = ("source", "task", "backend", "endpoints")
_GROUP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
SCALING_KEYS = (
    "min_replicas",
    "max_replicas",
    "target_requests",
    "scale_up_delay",
    "scale_down_delay",
)


@dataclass(frozen=True)
class Scaling:
    """A model's autoscaling bounds and pace. The launcher's autoscaler and the Kubernetes
    HPA both read it: desired replicas = ceil(load / target_requests) within
    [min_replicas, max_replicas], applied once it has held for the delay of its direction."""

    max_replicas: int
    target_requests: float
    min_replicas: int = 1
    scale_up_delay: float = 0.0
    scale_down_delay: float = 30.0

    def __post_init__(self) -> None:
        for key in ("min_replicas", "max_replicas"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise InvalidArgument(f"scaling.{key} must be a whole number >= 0, got {value!r}")
        if self.min_replicas > self.max_replicas:
            raise InvalidArgument(
                f"scaling.min_replicas ({self.min_replicas}) must not exceed "
                f"scaling.max_replicas ({self.max_replicas})"
            )
        if self.max_replicas < 1:
            raise InvalidArgument("scaling.max_replicas must be at least 1")
        if not _is_number(self.target_requests) or self.target_requests <= 0:
            raise InvalidArgument(
                f"scaling.target_requests must be a number > 0, got {self.target_requests!r}"
            )
        for key in ("scale_up_delay", "scale_down_delay"):
            value = getattr(self, key)
            if not _is_number(value) or value < 0:
                raise InvalidArgument(f"scaling.{key} must be seconds >= 0, got {value!r}")

    def clamp(self, replicas: int) -> int:
        return max(self.min_replicas, min(self.max_replicas, replicas))


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def parse_scaling(raw: Any) -> Scaling:
    """A `scaling:` mapping as written in a model list; unknown keys are refused (typos)."""
    if not isinstance(raw, dict):
        raise InvalidArgument(f"scaling must be a mapping, got {raw!r}")
    unknown = sorted(set(raw) - set(SCALING_KEYS))
    if unknown:
        raise InvalidArgument(
            f"scaling has unknown key(s) {', '.join(unknown)} (known: {', '.join(SCALING_KEYS)})"
        )
    missing = [key for key in ("max_replicas", "target_requests") if key not in raw]
    if missing:
        raise InvalidArgument(f"scaling needs {' and '.join(missing)}")
    return Scaling(**raw)


@dataclass
class Adapter:
    """A LoRA adapter served with its base model under its own name."""

    name: str
    source: str
    storage_uri: str | None = None


def parse_adapters(model: str, raw: Any) -> list[dict[str, str]]:
    """A model's `adapters:` as written: a list of `{name, source}`, names unique."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise InvalidArgument(f"model '{model}': adapters must be a list of {{name, source}}")
    seen: set[str] = set()
    for item in raw:
        if not isinstance(item, dict) or not item.get("name") or not item.get("source"):
            raise InvalidArgument(
                f"model '{model}': each adapter needs a 'name' and a 'source', got {item!r}"
            )
        unknown = sorted(set(item) - {"name", "source", "storage_uri"})
        if unknown:
            raise InvalidArgument(
                f"model '{model}': adapter '{item['name']}' has unknown key(s) {', '.join(unknown)}"
            )
        if item["name"] in seen or item["name"] == model:
            raise InvalidArgument(f"model '{model}': adapter name '{item['name']}' is taken")
        seen.add(item["name"])
    return [{key: str(value) for key, value in item.items()} for item in raw]


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
    scaling: Scaling | None = None
    storage_uri: str | None = None
    adapters: list[Adapter] = field(default_factory=list)
    routing: str | None = None  # None: the task's default
    revision_of: str | None = None  # the public name this entry is a revision of
    traffic: float | None = None  # its weight among the revisions of `revision_of`
    tool_parser: str | None = None  # how the model writes tool calls (tool_format.py)
    engine_group: str | None = None  # its HF engine process is the group's (None: its own)

    def __post_init__(self) -> None:
        if self.tool_parser is not None and self.tool_parser not in TOOL_PARSERS:
            raise InvalidArgument(
                f"model '{self.name}': tool_parser must be one of {', '.join(TOOL_PARSERS)}, "
                f"got {self.tool_parser!r}"
            )
        if self.routing is not None and self.routing not in ROUTING_POLICIES:
            raise InvalidArgument(
                f"model '{self.name}': routing must be one of {', '.join(ROUTING_POLICIES)}, "
                f"got {self.routing!r}"
            )
        if self.traffic is not None and (not _is_number(self.traffic) or self.traffic < 0):
            raise InvalidArgument(
                f"model '{self.name}': traffic must be a number >= 0, got {self.traffic!r}"
            )
        if self.traffic is not None and self.revision_of is None:
            raise InvalidArgument(f"model '{self.name}': traffic needs revision_of")
        if self.engine_group is not None:
            self._check_group()

    def _check_group(self) -> None:
        if not isinstance(self.engine_group, str) or not _GROUP_NAME.fullmatch(self.engine_group):
            raise InvalidArgument(
                f"model '{self.name}': engine_group must be a name of letters, digits, '_', "
                f"'.' and '-', got {self.engine_group!r}"
            )
        if self.replicas != 1 or self.scaling is not None:
            raise InvalidArgument(
                f"model '{self.name}': a model of an engine group runs in the group's one "
                "process, so it has one replica and no scaling; drop engine_group to scale it"
            )

    @property
    def routing_policy(self) -> str:
        """The routing policy in force: as written, else prefix for generative models (their
        replicas cache prompt prefixes) and least_loaded for encoders."""
        if self.routing is not None:
            return self.routing
        return "prefix" if self.task.is_generative else "least_loaded"

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


def model_entry(
    raw: dict[str, Any],
    *,
    source: str,
    task: Task,
    backend: str,
    adapters: list[Adapter] | None = None,
) -> ModelEntry:
    """An entry from its YAML fields, with the three a planner decides given.

    With a `scaling` block, `replicas` (the starting count) defaults to 1 within the bounds
    and must lie within them when given.
    """
    name = raw["name"]
    try:
        scaling = parse_scaling(raw["scaling"]) if raw.get("scaling") is not None else None
    except InvalidArgument as error:
        raise InvalidArgument(f"model '{name}': {error.message}") from None
    replicas = int(raw.get("replicas", scaling.clamp(1) if scaling else 1))
    if scaling and not scaling.min_replicas <= replicas <= scaling.max_replicas:
        raise InvalidArgument(
            f"model '{name}': replicas ({replicas}) must lie within scaling's "
            f"[{scaling.min_replicas}, {scaling.max_replicas}]"
        )
    entry = ModelEntry(
        name=name,
        source=source,
        task=task,
        backend=backend,
        fallback=raw.get("fallback"),
        max_model_len=raw.get("max_model_len"),
        replicas=replicas,
        engine_args=[str(a) for a in raw.get("engine_args", [])],
        scaling=scaling,
        adapters=adapters or [],
        routing=raw.get("routing"),
        revision_of=raw.get("revision_of"),
        traffic=raw.get("traffic"),
        tool_parser=raw.get("tool_parser"),
        engine_group=raw.get("engine_group"),
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
        if not isinstance(raw, dict):
            raise InvalidArgument(f"a model in the model list must be a mapping, got {raw!r}")
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
    adapters = [Adapter(**a) for a in parse_adapters(name, raw.get("adapters"))]
    entry = model_entry(
        raw,
        source=str(raw["source"]),
        task=Task(raw["task"]),
        backend=raw["backend"],
        adapters=adapters,
    )
    entry.storage_uri = raw.get("storage_uri")
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
    keys = ("fallback", "max_model_len", "routing", "revision_of", "traffic", "tool_parser")
    for key in (*keys, "engine_group"):
        if getattr(entry, key) is not None:
            out[key] = getattr(entry, key)
    out["replicas"] = entry.replicas
    if entry.scaling is not None:
        out["scaling"] = {key: getattr(entry.scaling, key) for key in SCALING_KEYS}
    if entry.engine_args:
        out["engine_args"] = entry.engine_args
    if entry.storage_uri:
        out["storage_uri"] = entry.storage_uri
    if entry.adapters:
        out["adapters"] = [
            {k: v for k, v in vars(a).items() if v is not None} for a in entry.adapters
        ]
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
    revisions(plan.models)
    return plan


def revisions(models: list[ModelEntry]) -> dict[str, dict[str, float]]:
    """Public name → {revision entry name: traffic weight} (a revision without `traffic`
    weighs 1). A public name must not also be an entry's name, its revisions share one task,
    and at least one must have a weight above 0."""
    by_public: dict[str, list[ModelEntry]] = {}
    for entry in models:
        if entry.revision_of is not None:
            by_public.setdefault(entry.revision_of, []).append(entry)
    names = {entry.name for entry in models}
    out = {}
    for public, entries in by_public.items():
        if public in names:
            raise InvalidArgument(
                f"'{public}' is both a model's name and the revision_of of "
                f"{', '.join(e.name for e in entries)}"
            )
        if len({e.task for e in entries}) > 1:
            raise InvalidArgument(f"the revisions of '{public}' serve different tasks")
        weights = {e.name: 1.0 if e.traffic is None else float(e.traffic) for e in entries}
        if not any(weights.values()):
            raise InvalidArgument(f"every revision of '{public}' has traffic 0")
        out[public] = weights
    return out


def load_model_list(path: str | Path) -> MeshPlan:
    return parse_model_list(_read_document(path))
