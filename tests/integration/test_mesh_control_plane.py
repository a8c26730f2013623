"""A mesh wired through the control plane, as real processes under continuous traffic.

Control plane, tokenizer, one planned HF engine and the gateway, every service given the
control plane (`HFMESH_CONTROL_PLANE`); two more engine replicas started by hand register and
take gateway traffic with no restart; SIGTERM on one → it drains and leaves; `kill -9` of the
other → the control plane's health check withdraws it; `kill -9` of the control plane → the
gateway keeps routing to its last known replicas. No request fails along the way (the gateway
retries an UNAVAILABLE engine call on another replica).
"""

from __future__ import annotations

import signal
import threading

import httpx
import pytest
import yaml

from services.launcher.processes import ServiceProcess, start_service, wait_ready
from tests.helpers.mesh import model_entry, running_mesh
from tests.helpers.metrics import wait_until

pytestmark = pytest.mark.slow  # five to six processes

MODEL = "sentiment"


class Traffic:
    """KServe V1 predictions sent one after another from a thread; every answer recorded."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.ok = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        body = {"instances": ["a fine day", "a dull evening"]}
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self._stop.is_set():
                try:
                    reply = client.post(f"/v1/models/{MODEL}:predict", json=body)
                except httpx.HTTPError as error:
                    self.failures.append(repr(error))
                    continue
                if reply.status_code == 200:
                    self.ok += 1
                else:
                    self.failures.append(f"{reply.status_code} {reply.text}")

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)

    def more(self, count: int, timeout: float = 10.0) -> bool:
        """At least `count` more requests succeed within `timeout` seconds."""
        target = self.ok + count
        return wait_until(lambda: self.ok >= target, timeout)


def _encodes(engine: ServiceProcess) -> int:
    """Requests the engine served (it logs each one)."""
    return engine.log().count(" encode ")


def _gateway_replicas(gateway: ServiceProcess) -> str:
    return httpx.get(f"{gateway.url}/metrics", timeout=10).text


def _known_models(path, source: str) -> str:
    """The control plane's model list: the model, no static endpoint (replicas register)."""
    entry = {
        "name": MODEL,
        "source": source,
        "task": "sequence_classification",
        "backend": "huggingface",
        "endpoints": {"tokenizer": [], "huggingface": []},
    }
    path.write_text(yaml.safe_dump({"models": [entry]}))
    return str(path)


def test_replicas_come_and_go_under_traffic(model_path, tmp_path):
    source = model_path("tiny-bert-sentiment")
    logs = tmp_path / "logs"
    args = ["--model_list", _known_models(tmp_path / "known.yaml", source), "--host", "127.0.0.1"]
    args += ["--health_interval", "0.5", "--health_failures", "2", "--lease_ttl", "3"]
    plane = start_service("services.control_plane", args, ready_timeout=60, log_dir=logs)
    env = {"HFMESH_CONTROL_PLANE": plane.address}
    hand: list[ServiceProcess] = []
    mesh_dir = tmp_path / "mesh"
    mesh_dir.mkdir()
    try:
        entries = [model_entry(MODEL, source, "sequence_classification")]
        with running_mesh(entries, mesh_dir, env=env) as mesh:
            with Traffic(mesh["gateway"].url) as traffic:
                first = mesh.engine(MODEL)
                assert wait_until(lambda: _encodes(first) > 0, 10), (
                    "the planned engine gets no traffic"
                )
                assert f"registered {MODEL}.huggingface at {first.address}" in plane.log()

                # Two replicas nobody planned: they register and take traffic within 5 s.
                engine_args = ["--model_dir", source, "--model_name", MODEL, "--host", "127.0.0.1"]
                engine_args += ["--task", "sequence_classification"]
                for name in ("hand-1", "hand-2"):
                    hand.append(
                        start_service(
                            "services.engine_hf",
                            [*engine_args, "--control_plane", plane.address],
                            name=name,
                            ready="none",
                            log_dir=logs,
                        )
                    )
                for replica in hand:
                    wait_ready(replica, "grpc", 120)
                    assert wait_until(lambda r=replica: _encodes(r) > 0, 5), (
                        f"{replica.name} got no gateway traffic within 5 s"
                    )
                draining, killed = hand

                # SIGTERM: marked draining, deregistered, gone from the gateway; exit 0.
                draining.kill(signal.SIGTERM)
                assert draining.process.wait(30) == 0
                lines = plane.log().splitlines()
                said = [i for i, line in enumerate(lines) if f"at {draining.address}" in line]
                assert any("is draining" in lines[i] for i in said), plane.log()[-3000:]
                drained = next(i for i in said if "is draining" in lines[i])
                assert any("deregistered" in lines[i] and i > drained for i in said)
                assert wait_until(
                    lambda: draining.address not in _gateway_replicas(mesh["gateway"]), 5
                )
                assert traffic.more(20)

                # kill -9: the control plane's health check withdraws it; the gateway follows.
                killed.kill(signal.SIGKILL)
                assert wait_until(
                    lambda: killed.address not in _gateway_replicas(mesh["gateway"]), 5
                )
                served = _encodes(first)
                assert traffic.more(20)
                assert _encodes(first) > served

                # The control plane dies: the gateway keeps its last known replicas.
                plane.kill(signal.SIGKILL)
                plane.process.wait(10)
                served = _encodes(first)
                assert traffic.more(50)
                assert _encodes(first) > served
                assert first.address in _gateway_replicas(mesh["gateway"])
        assert traffic.failures == [], traffic.failures[:5]
    finally:
        for replica in hand:
            replica.stop()
        plane.stop()
