"""The launcher's supervisor with real processes (tests/unit/launcher/child.py)."""

from __future__ import annotations

import os
import re
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from services.launcher.plan import ProcessSpec
from services.launcher.processes import free_port
from services.launcher.supervisor import Supervisor

CHILD = "tests.unit.launcher.child"


def _spec(name: str, *args: str) -> ProcessSpec:
    return ProcessSpec(name, CHILD, list(args), free_port())


def _until(
    check: Callable[[], bool], supervisor: Supervisor | None = None, timeout: float = 10.0
) -> None:
    """Poll `check` (and the supervisor) until true; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if supervisor is not None:
            supervisor.poll()
        if check():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout}s")
        time.sleep(0.02)


def _pids(supervisor: Supervisor, name: str, key: str = "pid") -> list[int]:
    log = supervisor.processes[name].log()
    return [int(pid) for pid in re.findall(rf"^{key} (\d+)$", log, re.MULTILINE)]


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _gone(pid: int) -> bool:
    """Exited (a zombie nobody reaps counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return True
    return state in ("Z", "X")


@pytest.fixture
def supervisors():
    made: list[Supervisor] = []

    def make(*specs: ProcessSpec, **kw) -> Supervisor:
        lines: list[str] = []
        values = {"initial_backoff": 0.05, "grace_seconds": 2.0, "report": lines.append, **kw}
        supervisor = Supervisor(**values)
        supervisor.lines = lines  # type: ignore[attr-defined]
        made.append(supervisor)
        for spec in specs:
            supervisor.add(spec)
        return supervisor

    yield make
    for supervisor in made:
        supervisor.stop_all()


def test_a_killed_service_restarts_on_its_port_and_the_others_are_untouched(supervisors, tmp_path):
    specs = [_spec(name) for name in ("a", "b", "c")]
    supervisor = supervisors(*specs, log_dir=tmp_path)
    _until(lambda: all(_pids(supervisor, s.name) for s in specs))
    before = {s.name: _pids(supervisor, s.name)[0] for s in specs}
    os.kill(before["b"], signal.SIGKILL)

    _until(lambda: supervisor.entries["b"].restarts == 1, supervisor)
    _until(lambda: _pids(supervisor, "b") != [] and _listening(specs[1].port))
    after = {s.name: _pids(supervisor, s.name)[0] for s in specs}
    assert after["b"] != before["b"] and supervisor.processes["b"].port == specs[1].port
    assert {after["a"], after["c"]} == {before["a"], before["c"]}
    assert all(supervisor.processes[name].alive() for name in ("a", "c"))
    assert supervisor.lines[0] == (
        f"hfmesh: b exited with -9 (SIGKILL); restarting in 0.05s (log: {tmp_path / 'b.prev.log'})"
    )
    assert f"pid {before['b']}" in (tmp_path / "b.prev.log").read_text()
    assert supervisor.lines[1].startswith("hfmesh: b restarted (pid ")


def test_backoff_grows_on_a_crash_loop_and_resets_after_a_stable_run(supervisors):
    crashing = supervisors(_spec("crash", "--exit_after", "0", "--code", "3"), max_backoff=0.2)
    _until(lambda: len(crashing.lines) >= 9, crashing)
    deaths = [line for line in crashing.lines if "exited with" in line]
    assert all(line.startswith("hfmesh: crash exited with 3;") for line in deaths)
    delays = [float(re.search(r"restarting in ([\d.]+)s", line)[1]) for line in deaths]
    assert delays[:5] == [0.05, 0.1, 0.2, 0.2, 0.2]

    steady = supervisors(_spec("steady", "--exit_after", "0.3"), stable_seconds=0.2)
    _until(lambda: len(steady.lines) >= 5, steady)
    assert [
        line.split("restarting in ")[1][:5] for line in steady.lines if "exited with 0" in line
    ][:3] == ["0.05s"] * 3


def test_add_and_remove_at_run_time(supervisors):
    supervisor = supervisors(_spec("a"))
    extra = _spec("extra")
    supervisor.add(extra)
    _until(lambda: _listening(extra.port))
    with pytest.raises(ValueError, match="already supervised"):
        supervisor.add(extra)
    pid = _pids(supervisor, "extra")[0]
    supervisor.remove("extra")
    assert _gone(pid) and "extra" not in supervisor.processes
    supervisor.poll()
    assert supervisor.processes["a"].alive() and supervisor.lines == []


def test_stop_all_leaves_no_process_behind(supervisors):
    supervisor = supervisors(
        _spec("a", "--spawn"), _spec("stubborn", "--ignore_term"), _spec("b"), grace_seconds=3.0
    )
    _until(
        lambda: (
            _pids(supervisor, "a", "worker")
            and _pids(supervisor, "stubborn")
            and _pids(supervisor, "b")
        )
    )
    pids = [
        *_pids(supervisor, "a"),
        *_pids(supervisor, "a", "worker"),
        *_pids(supervisor, "stubborn"),
        *_pids(supervisor, "b"),
    ]
    supervisor.stop_all()
    assert [pid for pid in pids if not _gone(pid)] == []
    assert supervisor.lines == ["hfmesh: stubborn did not stop within 3s; killed"]
    supervisor.poll()  # stopping: nothing is restarted
    assert not any(p.alive() for p in supervisor.processes.values())


def test_stop_all_stops_the_last_ones_after_the_others(supervisors):
    seen: list[tuple[str, bool]] = []
    supervisor = supervisors(
        _spec("engine", "--ignore_term"),
        _spec("control_plane"),
        grace_seconds=0.5,
        report=lambda line: seen.append((line, supervisor.processes["control_plane"].alive())),
    )
    _until(lambda: _pids(supervisor, "engine") and _pids(supervisor, "control_plane"))
    supervisor.stop_all(last=["control_plane"])
    # While the engine was being killed, the control plane still ran; then it stopped too.
    assert seen == [("hfmesh: engine did not stop within 0.5s; killed", True)]
    assert supervisor.processes["control_plane"].process.returncode == -signal.SIGTERM
