"""Issue 12's canary acceptance with real processes: `python -m services.launcher --no_vllm`
serving the public name `chat` as two revisions of tiny-llama (`chat-v1`, `chat-v2`, one HF
engine each, `revision_of: chat`, traffic 90/10). 2,000 requests split within ±3 points;
rewriting the weights to 0/100 in the model list the gateway reads moves every new request to
`chat-v2` without a restart, while streams already running on `chat-v1` finish in full.

Which revision served a request is counted twice: by the gateway
(`hfmesh_gateway_revision_requests_total{model, revision}`) and by each engine's own log
(`generate <id>` per request).
"""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import yaml

from services.launcher.processes import free_port
from tests.helpers.launcher import LauncherRun, launched
from tests.helpers.mesh import free_port_run
from tests.helpers.metrics import scrape, wait_until

pytestmark = pytest.mark.slow  # a launcher with five processes

PUBLIC, OLD, NEW = "chat", "chat-v1", "chat-v2"
PROMPT = list(range(20, 60))


class Launcher(LauncherRun):
    def __init__(self, tmp: Path) -> None:
        self.logs = tmp / "logs"
        self.port = free_port()
        models = [
            {"name": OLD, "model": "tiny-llama", "revision_of": PUBLIC, "traffic": 90},
            {"name": NEW, "model": "tiny-llama", "revision_of": PUBLIC, "traffic": 10},
        ]
        model_list = tmp / "list.yaml"
        model_list.write_text(yaml.safe_dump({"models": models}))
        args = ["--model_list", str(model_list), "--no_vllm", "--port", str(self.port)]
        # one engine per revision: `served` counts each revision's requests in its engine's log
        args += ["--engine_per_model"]
        args += ["--base_port", str(free_port_run(3)), "--control_plane_port", str(free_port())]
        args += ["--log_dir", str(self.logs), "--ready_timeout", "240"]
        super().__init__(tmp, args, env={"HFMESH_MODEL_LIST_RELOAD": "0.2"})
        self.url = f"http://127.0.0.1:{self.port}"

    def revision_metric(self, name: str) -> dict[str, float]:
        prefix = f"hfmesh_gateway_{name}{{"
        return {
            sample.split('revision="')[1].split('"')[0]: value
            for sample, value in scrape(f"{self.url}/metrics").items()
            if sample.startswith(prefix)
        }

    def served(self, revision: str) -> int:
        log = self.logs / f"huggingface-{revision}.log"
        return log.read_text(errors="replace").count(" generate ") if log.exists() else 0

    def set_traffic(self, weights: dict[str, int]) -> None:
        """Rewrite the weights in the planned model list the gateway reads."""
        mesh_file = self.logs / "mesh.yaml"
        document = yaml.safe_load(mesh_file.read_text())
        for entry in document["models"]:
            entry["traffic"] = weights[entry["name"]]
        mesh_file.write_text(yaml.safe_dump(document, sort_keys=False))


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    with launched(Launcher(tmp_path_factory.mktemp("canary")), timeout=300) as launcher:
        yield launcher


def _complete(client: httpx.Client, _: int = 0) -> None:
    body = {"model": PUBLIC, "prompt": PROMPT, "max_tokens": 1}
    reply = client.post("/openai/v1/completions", json=body)
    assert reply.status_code == 200, reply.text
    assert reply.json()["model"] == PUBLIC


@pytest.mark.heavy
def test_weights_90_10_split_2000_requests_within_3_points(mesh):
    before = {r: mesh.served(r) for r in (OLD, NEW)}
    with httpx.Client(base_url=mesh.url, timeout=120) as client:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda i: _complete(client, i), range(2000)))
    counted = mesh.revision_metric("revision_requests_total")
    assert sum(counted.values()) == 2000
    assert wait_until(lambda: sum(mesh.served(r) - before[r] for r in (OLD, NEW)) == 2000, 10)
    served = {r: mesh.served(r) - before[r] for r in (OLD, NEW)}
    assert served == counted  # the engines agree with the gateway
    share = served[NEW] / 2000
    assert 0.07 <= share <= 0.13, served
    print(f"\n2000 requests at 90/10: {served} ({share:.1%} to {NEW})")
    assert mesh.revision_metric("revision_traffic") == {OLD: 90, NEW: 10}


def test_moving_to_0_100_at_run_time_drains_the_old_revision(mesh):
    streams: list[dict] = []
    lock = threading.Lock()

    def stream(_: int) -> None:
        body = {
            "model": PUBLIC,
            "prompt": PROMPT,
            "max_tokens": 300,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        usage = None
        with httpx.Client(base_url=mesh.url, timeout=300) as client:
            with client.stream("POST", "/openai/v1/completions", json=body) as reply:
                assert reply.status_code == 200
                for line in reply.iter_lines():
                    if line.startswith("data: {"):
                        chunk = json.loads(line[6:])
                        usage = chunk.get("usage") or usage
        with lock:
            streams.append(usage)

    old_before = mesh.served(OLD)
    with ThreadPoolExecutor(10) as pool:
        running = [pool.submit(stream, i) for i in range(10)]
        # most of the ten went to the old revision (90/10) and are generating there
        assert wait_until(lambda: mesh.served(OLD) >= old_before + 8, 60)
        mesh.set_traffic({OLD: 0, NEW: 100})
        assert wait_until(lambda: mesh.revision_metric("revision_traffic")[OLD] == 0, 10)
        with lock:
            assert len(streams) < 10, "the streams ended before the weights changed"
        old_at_change = mesh.served(OLD)
        counted = mesh.revision_metric("revision_requests_total")
        with httpx.Client(base_url=mesh.url, timeout=120) as client:
            for _ in range(100):
                _complete(client)
        after = mesh.revision_metric("revision_requests_total")
        assert after[OLD] == counted[OLD] and after[NEW] == counted[NEW] + 100
        assert mesh.served(OLD) == old_at_change  # no new request reached the old revision
        for future in running:
            future.result()
    assert len(streams) == 10
    assert all(u is not None and u["completion_tokens"] == 300 for u in streams), streams
