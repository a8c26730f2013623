"""Engine replicas added to a running mesh and removed from it, under the mesh's supervisor.

`Replicas(plan, supervisor, env, planned=specs)` knows every engine process of the mesh per
(model, backend), the planned ones first. `add(model, backend)` starts one more on a free port,
with the flags its planned replicas have and the environment that points it at the control
plane: it registers itself when ready, and clients that follow the control plane (the gateway,
`xds:///` clients) pick it up without a restart; the supervisor restarts it like any planned
service and stops it with the mesh. `remove(model, backend)` stops the one started last
(SIGTERM: it deregisters, drains, exits), but never a model's last replica on that backend;
`scale(model, n)` adds or removes until there are `n`, zero included (the autoscaler's
`scale`). A model of an engine group counts the group's process as its planned replica (never
removed: a grouped model has one replica and no scaling); a replica added to it is a process of
its own. `backend` defaults to the model's planned one. `handle` answers the commands of
`python -m services.launcher --add_replica` / `--remove_replica`
(`services.launcher.runstate`).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import Any

from services.common.errors import InvalidArgument
from services.common.model_list import MeshPlan
from services.common.tls import TlsConfig
from services.launcher.plan import ENGINE_MODULES, ProcessSpec, engine_args
from services.launcher.processes import free_port
from services.launcher.supervisor import Supervisor


class Replicas:
    def __init__(
        self,
        plan: MeshPlan,
        supervisor: Supervisor,
        env: dict[str, str],
        planned: Iterable[ProcessSpec] = (),
        tls: TlsConfig | None = None,
    ) -> None:
        self.plan = plan
        self.supervisor = supervisor
        self.env = env
        self.tls = tls
        #: (model, backend) → its engine processes' names, oldest first.
        self.running: dict[tuple[str, str], list[str]] = {}
        for spec in planned:
            if spec.backend is None:
                continue
            for model in [spec.model] if spec.model is not None else spec.group:
                self.running.setdefault((model, spec.backend), []).append(spec.name)

    def _key(self, model: str, backend: str | None) -> tuple[str, str]:
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
        return model, backend

    def count(self, model: str, backend: str | None = None) -> int:
        return len(self.running.get(self._key(model, backend), []))

    def add(self, model: str, backend: str | None = None) -> ProcessSpec:
        """Start one more engine of `model`; return its spec."""
        key = model, backend = self._key(model, backend)
        entry = self.plan.model(model)
        name = next(
            name
            for index in itertools.count(entry.replicas)
            if (name := f"{backend}-{model}-{index}") not in self.supervisor.entries
        )
        metrics_port = free_port()
        spec = ProcessSpec(
            name,
            ENGINE_MODULES[backend],
            [*engine_args(entry, backend), "--metrics_port", str(metrics_port)],
            free_port(),
            env=self.env,
            model=model,
            backend=backend,
            tls=self.tls,
        )
        process = self.supervisor.add(spec)
        self.running.setdefault(key, []).append(name)
        self.supervisor.report(
            f"hfmesh: {name} added (pid {process.process.pid}, port {spec.port}); "
            f"metrics on port {metrics_port}"
        )
        return spec

    def remove(self, model: str, backend: str | None = None, *, keep_one: bool = True) -> str:
        """Stop the engine of `model` started last; return its name."""
        key = self._key(model, backend)
        names = self.running.get(key, [])
        if not names:
            raise InvalidArgument(f"'{model}' has no {key[1]} replica to remove")
        if keep_one and len(names) == 1:
            raise InvalidArgument(
                f"'{model}' has one {key[1]} replica left; the mesh keeps it (scale to zero is "
                "the autoscaler's: a `scaling` block with min_replicas: 0)"
            )
        name = names.pop()
        self.supervisor.remove(name)
        self.supervisor.report(f"hfmesh: {name} removed")
        return name

    def scale(self, model: str, replicas: int, backend: str | None = None) -> None:
        """Add or remove engines of `model` until it has `replicas` (zero included)."""
        while self.count(model, backend) < replicas:
            self.add(model, backend)
        while self.count(model, backend) > replicas:
            self.remove(model, backend, keep_one=False)

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
