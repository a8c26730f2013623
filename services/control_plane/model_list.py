"""The mesh model list as an endpoint source: its models, their backends, static endpoints.

The control plane reads the planned list the launcher writes (every entry with `task`,
`backend` and `endpoints`); such a list is read without touching model files. An entry whose
backend is still `auto` prefers vLLM, then HF.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from services.common.errors import InvalidArgument
from services.common.model_list import load_model_list
from services.control_plane.store import (
    ENGINE_BACKENDS,
    TOKENIZER,
    Publication,
    ServiceKey,
    parse_address,
)

SOURCE = "static"


@dataclass
class StaticMesh:
    #: model → its backends, preferred first.
    models: dict[str, tuple[str, ...]] = field(default_factory=dict)
    publications: list[Publication] = field(default_factory=list)


def read_model_list(path: str | Path) -> StaticMesh:
    plan = load_model_list(path)
    mesh = StaticMesh()
    for entry in plan.models:
        backends = [b for b in entry.backends if b in ENGINE_BACKENDS] or list(ENGINE_BACKENDS)
        mesh.models[entry.name] = tuple(backends)
        endpoints = plan.endpoints.get(entry.name)
        if endpoints is None:
            continue
        roles = {TOKENIZER: endpoints.tokenizer, **endpoints.engines}
        for role, addresses in roles.items():
            for address in addresses:
                try:
                    parse_address(address)
                except ValueError as error:
                    raise InvalidArgument(
                        f"model list {path}, model {entry.name}: {error}"
                    ) from None
                mesh.publications.append(Publication(ServiceKey(entry.name, role), address))
    return mesh
