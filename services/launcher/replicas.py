"""Engine replicas added to a running mesh and removed from it, under the mesh's supervisor.

`Replicas(plan, supervisor, env).add(model, backend)` starts one more engine process for a
planned model on a free port, with the flags its planned replicas have and the environment that
points it at the control plane: it registers itself when ready, and clients that follow the
control plane (the gateway, `xds:///` clients) pick it up without a restart. The supervisor
restarts it like any planned service and stops it with the mesh. `remove` stops the replica of
that model added last (SIGTERM: it deregisters, drains, exits); the planned replicas follow the
model list. `handle` answers the commands of `python -m services.launcher --add_replica` and
`--remove_replica` (`services.launcher.runstate`); an autoscaler calls `add` and `remove`.
"""

from __future__ import annotations

import itertools
from typing import Any

from services.common.errors import InvalidArgument
from services.common.model_list import MeshPlan, ModelEntry
from services.launcher.plan import ENGINE_MODULES, ProcessSpec, engine_args
from services.launcher.processes import free_port
from services.launcher.supervisor import Supervisor


class Replicas:
    def __init__(self, plan: MeshPlan, supervisor: Supervisor, env: dict[str, str]) -> None:
        self.plan = plan
        self.supervisor = supervisor
        self.env = env
        self.added: list[tuple[str, str, str]] = []  # (model, backend, process name), oldest first

    def _entry(self, model: str, backend: str | None) -> tuple[ModelEntry, str]:
        try:
            entry = self.plan.model(model)
        except KeyError:
            known = ", ".join(m.name for m in self.plan.models)
            raise InvalidArgument(
                f"model '{model}' is not in the mesh (it serves {known})"
            ) from None
        backend = backend or entry.backend
        if backend not in entry.backends:
            raise InvalidArgument(
                f"model '{model}' is served by {' and '.join(entry.backends)}, not {backend}"
            )
        return entry, backend

    def add(self, model: str, backend: str | None = None) -> ProcessSpec:
        """Start one more engine of `model` (default: its planned backend); return its spec."""
        entry, backend = self._entry(model, backend)
        taken = self.supervisor.entries
        name = next(
            name
            for index in itertools.count(entry.replicas)
            if (name := f"{backend}-{model}-{index}") not in taken
        )
        spec = ProcessSpec(
            name, ENGINE_MODULES[backend], engine_args(entry, backend), free_port(), env=self.env
        )
        process = self.supervisor.add(spec)
        self.added.append((model, backend, name))
        self.supervisor.report(
            f"hfmesh: {name} added (pid {process.process.pid}, port {spec.port})"
        )
        return spec

    def remove(self, model: str, backend: str | None = None) -> str:
        """Stop the replica of `model` added last (on `backend` when given); return its name."""
        self._entry(model, backend)
        for index in range(len(self.added) - 1, -1, -1):
            added_model, added_backend, name = self.added[index]
            if added_model == model and backend in (None, added_backend):
                del self.added[index]
                self.supervisor.remove(name)
                self.supervisor.report(f"hfmesh: {name} removed")
                return name
        raise InvalidArgument(
            f"no replica of '{model}' was added to this mesh; its planned replicas follow the "
            "model list"
        )

    def handle(self, command: dict[str, Any]) -> dict[str, Any]:
        """One command of `services.launcher.runstate.CommandBox`, answered."""
        action, model, backend = command.get("action"), command.get("model"), command.get("backend")
        try:
            if not isinstance(model, str) or not model:
                raise InvalidArgument("the command names no model")
            if action == "add_replica":
                spec = self.add(model, backend)
                process = self.supervisor.processes[spec.name]
                return {
                    "ok": True,
                    "name": spec.name,
                    "pid": process.process.pid,
                    "port": spec.port,
                    "log": str(process.log_path),
                }
            if action == "remove_replica":
                return {"ok": True, "name": self.remove(model, backend)}
            raise InvalidArgument(f"unknown action {action!r}")
        except (InvalidArgument, OSError) as error:
            message = error.message if isinstance(error, InvalidArgument) else str(error)
            return {"ok": False, "message": message}
