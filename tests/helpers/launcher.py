"""`python -m services.launcher` run as a user runs it, for integration tests.

`LauncherRun(tmp, args, env)` starts it (with `env` added to the environment) with its output
in `tmp/launcher.out` and its own run file (`tmp/run/launcher.json`, passed first, so `args`
may not name another); `wait_for` polls that output for a line, `scale` runs
`--add_replica`/`--remove_replica` against it, `stop` sends SIGTERM. `launched(run)` is the
module fixture's body: up, yielded, stopped, and any process the launcher failed to stop killed.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil

from services.launcher.processes import ROOT
from tests.helpers.metrics import wait_until


class LauncherRun:
    def __init__(self, tmp: Path, args: list[str], env: dict[str, str] | None = None) -> None:
        self.tmp = tmp
        self.output = tmp / "launcher.out"
        self.run_file = tmp / "run" / "launcher.json"
        with open(self.output, "wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "services.launcher", "--run_file", str(self.run_file)]
                + args,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
            )

    def text(self) -> str:
        return self.output.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout: float = 120.0) -> re.Match[str]:
        """The first match of `pattern` (multiline) in the output, within `timeout` s; fails
        at once if the launcher exited."""
        found: list[re.Match[str]] = []

        def seen() -> bool:
            assert self.process.poll() is None, f"the launcher exited:\n{self.text()[-4000:]}"
            match = re.search(pattern, self.text(), re.MULTILINE)
            if match:
                found.append(match)
            return match is not None

        assert wait_until(seen, timeout, 0.1), f"not within {timeout:g}s: /{pattern}/"
        return found[0]

    def scale(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "services.launcher", *args, "--run_file", str(self.run_file)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=240,
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()


@contextmanager
def launched(run: LauncherRun, timeout: float) -> Iterator[LauncherRun]:
    try:
        run.wait_for(r"^hfmesh is up: ", timeout=timeout)
        yield run
    finally:
        run.stop()
        for child in psutil.Process().children(recursive=True):
            child.kill()  # only if the launcher failed to stop its own
