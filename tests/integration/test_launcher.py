"""`python -m services.launcher` as a user runs it, on one tiny encoder model (HF engine, no
vLLM): it comes up behind its control plane and answers through the gateway; `kill -9` of the
engine or the tokenizer is printed, the service restarts on its port and the gateway answers
again; `--add_replica` / `--remove_replica` change the running mesh; SIGTERM leaves no process
behind. The tests share one launcher and run in file order (the last one stops it)."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil
import pytest
import yaml

from services.gateway.discovery import Discovery, Endpoint
from services.launcher.processes import ROOT, free_port
from tests.helpers.launcher import LauncherRun, launched
from tests.helpers.mesh import free_port_run

pytestmark = pytest.mark.slow  # a multi-process mesh

MODEL = "sentiment"
ENGINE = "huggingface-group-shared"  # the launcher's default engine group
REPLICA = f"huggingface-{MODEL}-1"  # an added replica is a process of the model alone


def _until(check: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g}s: {what}")
        time.sleep(0.25)


class Launcher(LauncherRun):
    def __init__(self, tmp: Path, *args: str) -> None:
        self.port, self.control_port = free_port(), free_port()
        self.base_port = free_port_run(2)
        raw = tmp / "list.yaml"
        raw.write_text(
            yaml.safe_dump({"models": [{"name": MODEL, "model": "tiny-bert-sentiment"}]})
        )
        super().__init__(
            tmp,
            [
                "--model_list",
                str(raw),
                "--no_vllm",
                "--port",
                str(self.port),
                "--base_port",
                str(self.base_port),
                "--control_plane_port",
                str(self.control_port),
                "--log_dir",
                str(tmp / "logs"),
                "--ready_timeout",
                "120",
                *args,
            ],
        )

    def children(self) -> dict[str, psutil.Process]:
        """The launcher's service processes by `--port` (the supervised process of each)."""
        out = {}
        for child in psutil.Process(self.process.pid).children():
            command = child.cmdline()
            out[command[command.index("--port") + 1]] = child
        return out

    def service(self, port: int) -> psutil.Process:
        return self.children()[str(port)]

    def answers(self) -> bool:
        try:
            reply = httpx.post(
                f"http://127.0.0.1:{self.port}/v1/models/{MODEL}:predict",
                json={"instances": ["a good film", "a bad film"]},
                timeout=10,
            )
        except httpx.HTTPError:
            return False
        return reply.status_code == 200 and len(reply.json()["predictions"]) == 2


@pytest.fixture(scope="module")
def launcher(tmp_path_factory):
    with launched(Launcher(tmp_path_factory.mktemp("launcher")), timeout=180) as started:
        yield started


def test_up_behind_the_control_plane_and_answering(launcher):
    assert launcher.answers()
    text = launcher.text()
    bootstrap = launcher.tmp / "logs" / "xds-bootstrap.json"
    assert f"GRPC_XDS_BOOTSTRAP={bootstrap}" in text
    assert f'"server_uri": "127.0.0.1:{launcher.control_port}"' in bootstrap.read_text()
    order = [m.group(1) for m in re.finditer(r"^  ready  (\S+)", text, re.MULTILINE)]
    assert order[0] == "control_plane" and order[-1] == "gateway"
    assert sorted(order[1:-1]) == [ENGINE, "tokenizer"]
    children = launcher.children()
    assert len(children) == 4
    control = f"127.0.0.1:{launcher.control_port}"
    for port, child in children.items():
        expected = None if port == str(launcher.control_port) else control
        assert child.environ().get("HFMESH_CONTROL_PLANE") == expected, child.cmdline()
    # The launcher itself stays light: planning (torch) ran in a child process.
    rss_mb = psutil.Process(launcher.process.pid).memory_info().rss / 2**20
    assert rss_mb < 100, rss_mb


@pytest.mark.parametrize(
    ("name", "offset"), [(ENGINE, 1), ("tokenizer", 0)], ids=["engine", "tokenizer"]
)
def test_a_killed_service_is_restarted_and_the_mesh_answers_again(launcher, name, offset):
    port = launcher.base_port + offset
    victim = launcher.service(port)
    others = {p: c.pid for p, c in launcher.children().items() if p != str(port)}
    victim.kill()
    launcher.wait_for(rf"^hfmesh: {name} exited with -9 \(SIGKILL\); restarting in", timeout=10)
    launcher.wait_for(rf"^hfmesh: {name} restarted \(pid \d+, port {port}\)", timeout=15)
    _until(launcher.answers, 90, "the gateway answers again")
    assert launcher.service(port).pid != victim.pid
    assert {p: c.pid for p, c in launcher.children().items() if p != str(port)} == others


async def test_add_and_remove_a_replica(launcher):
    added = launcher.scale("--add_replica", MODEL, "--ready_timeout", "120")
    assert added.returncode == 0, added.stderr
    match = re.search(rf"started ({REPLICA}) \(pid (\d+), 127\.0\.0\.1:(\d+)\)", added.stdout)
    assert match, added.stdout
    assert f"{REPLICA} is serving" in added.stdout
    pid, port = int(match[2]), match[3]
    assert launcher.service(int(port)).pid == pid  # under the launcher's supervision
    launcher.wait_for(rf"^hfmesh: {REPLICA} added \(pid {pid}, port {port}\)", timeout=5)
    if _engines_register():
        # The replica registered itself: the control plane publishes it next to the static one.
        discovery = Discovery(f"127.0.0.1:{launcher.control_port}", [f"{MODEL}.huggingface"])
        await discovery.start(connect_timeout=5)
        try:
            mine = Endpoint(f"127.0.0.1:{port}")
            _until(lambda: mine in discovery.endpoints[f"{MODEL}.huggingface"], 10, "published")
        finally:
            await discovery.close()
        # ... and the gateway, following the control plane, sends it requests.
        log = launcher.tmp / "logs" / f"{REPLICA}.log"
        _until(lambda: launcher.answers() and " encode " in log.read_text(), 20, "traffic")
    assert launcher.answers()

    # Killed, it is restarted like a planned service.
    launcher.service(int(port)).kill()
    launcher.wait_for(rf"^hfmesh: {REPLICA} restarted \(pid \d+, port {port}\)", timeout=15)

    unknown = launcher.scale("--add_replica", "nope")
    assert unknown.returncode == 1
    assert f"model 'nope' is not in the mesh (it serves {MODEL})" in unknown.stderr

    removed = launcher.scale("--remove_replica", MODEL)
    assert removed.returncode == 0, removed.stderr
    assert f"{REPLICA} stopped" in removed.stdout
    assert port not in launcher.children()
    again = launcher.scale("--remove_replica", MODEL)
    assert again.returncode == 1
    assert f"'{MODEL}' has one huggingface replica left; the mesh keeps it" in again.stderr


def test_sigterm_stops_every_process_and_removes_the_run_file(launcher):
    assert launcher.run_file.exists()
    tree = psutil.Process(launcher.process.pid).children(recursive=True)
    assert len(tree) >= 4
    launcher.process.send_signal(signal.SIGTERM)
    assert launcher.process.wait(60) == 0
    assert "hfmesh: stopped" in launcher.text()
    assert [p.pid for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE] == []
    assert _processes_of(launcher.tmp) == []
    assert not launcher.run_file.exists()
    stale = launcher.scale("--add_replica", MODEL)
    assert stale.returncode == 1 and "no running launcher" in stale.stderr


def test_a_service_failing_at_start_up_is_a_start_up_error(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        failed = Launcher(tmp_path, "--control_plane_port", str(port))
        code = failed.process.wait(120)
    text = failed.text()
    assert code == 1, text
    assert re.search(
        r"^hfmesh: control_plane exited with 1; log: .*control_plane\.log$", text, re.M
    )
    assert "Failed to bind to address" in text  # the log's tail
    assert "hfmesh: stopped" in text
    assert _processes_of(tmp_path) == []


def _engines_register() -> bool:
    """Whether the engines take a control plane setting (they register with it when ready)."""
    result = subprocess.run(
        [sys.executable, "-m", "services.engine_hf", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return "--control_plane" in result.stdout


def _processes_of(folder: Path) -> list[str]:
    """Running processes whose command line names `folder` (the mesh's services do: their
    planned list is in its log folder)."""
    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        command = " ".join(process.info["cmdline"] or [])
        if str(folder) in command and process.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(command)
    return found
