"""Supervision of the local mesh: one process's death never takes the others with it.

`Supervisor.poll()` (the launcher calls it in its main loop; `run()` loops it) notices a service
that exited, prints it, kills what is left of its process group (engines spawn workers) and
restarts it on the same port after a backoff: `initial_backoff`, doubled at each death up to
`max_backoff`, back to `initial_backoff` once a run lasted `stable_seconds`. Nothing else is
touched: clients keep the survivors, and the restarted service registers itself again when it
is ready. With a log folder, the dead run's log is kept as `<name>.prev.log` (the restart writes
`<name>.log` anew). `add(spec)` / `remove(name)` change the supervised set at run time (a
replica added to a running mesh); `stop_all()` ends everything: SIGTERM to every process group
at once, `grace_seconds` for them to drain, then SIGKILL to every group, so nothing is left.
`stop_all(last=[...])` stops the named ones only after the others (the control plane outlives
the replicas that deregister from it as they drain).
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from pathlib import Path

from services.launcher.plan import ProcessSpec
from services.launcher.processes import ServiceProcess, start_service


def _print(line: str) -> None:
    print(line, flush=True)


@dataclass
class Supervised:
    spec: ProcessSpec
    process: ServiceProcess
    started_at: float
    delay: float  # the backoff before the next restart
    restart_at: float | None = None  # set while dead and waiting to restart
    restarts: int = 0


def exit_text(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"{code} ({signal.Signals(-code).name})"
        except ValueError:
            pass
    return str(code)


class Supervisor:
    def __init__(
        self,
        started: Iterable[tuple[ProcessSpec, ServiceProcess]] = (),
        *,
        log_dir: Path | None = None,
        initial_backoff: float = 1.0,
        max_backoff: float = 30.0,
        stable_seconds: float = 30.0,
        grace_seconds: float = 15.0,
        report: Callable[[str], None] = _print,
    ) -> None:
        self.log_dir = log_dir
        self.initial_backoff = initial_backoff
        self.max_backoff = max_backoff
        self.stable_seconds = stable_seconds
        self.grace_seconds = grace_seconds
        self.report = report
        now = time.monotonic()
        self.entries = {
            spec.name: Supervised(spec, process, now, initial_backoff) for spec, process in started
        }
        self.stopping = False

    @property
    def processes(self) -> dict[str, ServiceProcess]:
        return {name: entry.process for name, entry in self.entries.items()}

    def add(self, spec: ProcessSpec) -> ServiceProcess:
        """Start `spec` (not waiting for readiness) and supervise it."""
        if spec.name in self.entries:
            raise ValueError(f"{spec.name} is already supervised")
        entry = Supervised(spec, self._start(spec), time.monotonic(), self.initial_backoff)
        self.entries[spec.name] = entry
        return entry.process

    def remove(self, name: str) -> None:
        """Stop `name` (SIGTERM, grace, SIGKILL of its group) and forget it."""
        entry = self.entries.pop(name)
        entry.process.stop(grace=self.grace_seconds)

    def poll(self) -> None:
        """Notice deaths and start the restarts that are due."""
        if self.stopping:
            return
        now = time.monotonic()
        for name, entry in self.entries.items():
            if entry.restart_at is None and not entry.process.alive():
                self._died(name, entry, now)
            elif entry.restart_at is not None and now >= entry.restart_at:
                self._restart(name, entry)

    def run(self, interval: float = 0.5) -> None:
        """Poll until interrupted (Ctrl-C or the launcher's SIGTERM handler raising)."""
        while not self.stopping:
            self.poll()
            time.sleep(interval)

    def stop_all(self, last: Collection[str] = ()) -> None:
        """SIGTERM every process group, wait up to `grace_seconds`, SIGKILL them all; the
        services named in `last` the same way once the others are gone."""
        self.stopping = True
        self._stop([e.process for name, e in self.entries.items() if name not in last])
        self._stop([e.process for name, e in self.entries.items() if name in last])

    def _stop(self, processes: list[ServiceProcess]) -> None:
        for process in processes:
            process.kill(signal.SIGTERM)
        deadline = time.monotonic() + self.grace_seconds
        while any(p.alive() for p in processes) and time.monotonic() < deadline:
            time.sleep(0.05)
        for process in processes:
            if process.alive():
                self.report(
                    f"hfmesh: {process.name} did not stop within {self.grace_seconds:g}s; killed"
                )
            process.kill(signal.SIGKILL)
        for process in processes:
            try:
                process.process.wait(5)
            except subprocess.TimeoutExpired:
                self.report(f"hfmesh: {process.name} (pid {process.process.pid}) did not exit")

    def _died(self, name: str, entry: Supervised, now: float) -> None:
        entry.process.kill(signal.SIGKILL)  # workers the dead process left behind
        if now - entry.started_at >= self.stable_seconds:
            entry.delay = self.initial_backoff
        log = entry.process.log_path
        if self.log_dir is not None and log.exists():
            log = log.replace(log.with_suffix(".prev.log"))
        code = exit_text(entry.process.process.returncode)
        self.report(
            f"hfmesh: {name} exited with {code}; restarting in {entry.delay:g}s (log: {log})"
        )
        entry.restart_at = now + entry.delay
        entry.delay = min(entry.delay * 2, self.max_backoff)

    def _restart(self, name: str, entry: Supervised) -> None:
        try:
            entry.process = self._start(entry.spec)
        except OSError as error:
            self.report(
                f"hfmesh: {name} could not be restarted ({error}); retrying in {entry.delay:g}s"
            )
            entry.restart_at = time.monotonic() + entry.delay
            entry.delay = min(entry.delay * 2, self.max_backoff)
            return
        entry.restart_at = None
        entry.started_at = time.monotonic()
        entry.restarts += 1
        self.report(
            f"hfmesh: {name} restarted (pid {entry.process.process.pid}, port {entry.process.port})"
        )

    def _start(self, spec: ProcessSpec) -> ServiceProcess:
        return start_service(
            spec.module,
            spec.args,
            name=spec.name,
            port=spec.port,
            env=spec.env or None,
            ready="none",
            log_dir=self.log_dir,
            tls=spec.tls,
        )
