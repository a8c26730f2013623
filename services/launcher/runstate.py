"""How a second `python -m services.launcher` command finds the running mesh and asks it to act.

Once the mesh is up, the launcher writes its run file (default
`~/.cache/hfmesh/run/launcher.json`, `--run_file`): its pid, the control plane address, the
planned model list, the log folder, the xDS bootstrap and its command folder. It removes the
file when it stops; a file whose pid is gone is stale and says so.

A command (`{"action": "add_replica", "model": ..., "backend": ...}`) is one JSON file dropped
into the command folder; the launcher's main loop takes it, acts, and answers in
`<id>.reply.json`, which the asking process waits for. Files rather than a socket: nothing to
bind or secure beyond the user's own folder, and the launcher's loop stays one `poll()` among
its others. Every file is written under a temporary name and renamed, so no reader ever sees
half of one.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

DEFAULT_RUN_FILE = Path("~/.cache/hfmesh/run/launcher.json").expanduser()


class RunStateError(Exception):
    """No running launcher to talk to, or it did not answer."""


def write_json(path: Path, document: dict[str, Any]) -> None:
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    partial.write_text(json.dumps(document, indent=2))
    partial.replace(path)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class RunState:
    pid: int
    control_plane: str
    model_list: str
    log_dir: str
    bootstrap: str
    commands: str
    gateway: str
    tls_dir: str | None = None  # the mesh's certificates (`--tls_dir`), for readiness checks

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, asdict(self))

    @classmethod
    def read(cls, path: Path) -> RunState:
        """The running launcher's state; `RunStateError` when none runs."""
        try:
            state = cls(**json.loads(path.read_text()))
        except FileNotFoundError:
            raise RunStateError(
                f"no running launcher: {path} does not exist "
                "(start one with `python -m services.launcher`)"
            ) from None
        except (OSError, ValueError, TypeError) as error:
            raise RunStateError(f"cannot read {path}: {error}") from None
        if not pid_alive(state.pid):
            raise RunStateError(f"no running launcher: {path} is stale (pid {state.pid} is gone)")
        return state

    def remove(self, path: Path) -> None:
        """Remove the run file if it is still this launcher's."""
        try:
            if json.loads(path.read_text()).get("pid") == self.pid:
                path.unlink()
        except (OSError, ValueError):
            pass


class CommandBox:
    """The command folder: `send` (the asking side) and `serve` (the launcher's loop)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def send(self, command: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
        """Drop `command` and wait for the launcher's answer."""
        ident = f"{time.time_ns()}-{uuid.uuid4().hex[:8]}"
        write_json(self.folder / f"{ident}.json", command)
        reply = self.folder / f"{ident}.reply.json"
        deadline = time.monotonic() + timeout
        while not reply.exists():
            if time.monotonic() > deadline:
                (self.folder / f"{ident}.json").unlink(missing_ok=True)
                raise RunStateError(f"the launcher did not answer within {timeout:g}s")
            time.sleep(0.1)
        answer = json.loads(reply.read_text())
        reply.unlink(missing_ok=True)
        return answer

    def serve(self, handle: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        """Answer every waiting command, oldest first."""
        for path in sorted(self.folder.glob("*.json")):
            if path.name.endswith(".reply.json"):
                continue
            try:
                command = json.loads(path.read_text())
            except (OSError, ValueError) as error:
                answer: dict[str, Any] = {"ok": False, "message": f"unreadable command: {error}"}
            else:
                answer = handle(command)
            path.unlink(missing_ok=True)
            write_json(path.with_name(f"{path.stem}.reply.json"), answer)
