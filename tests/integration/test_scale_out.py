"""Issue 11's acceptance, as a user runs it: `python -m services.launcher --no_vllm` on tiny-llama
models, real `openai` SDK clients, real `kill -9`s.

One launcher serves three chat models (the tests share it and run in file order):
- `tiny-llama`: two planned HF replicas, no scaling. Continuous chat traffic (streaming and not,
  several threads) survives `kill -9` of a replica (only streams already running on it may
  fail), moves to the survivor, and returns to the restarted one; a third replica added with
  `--add_replica` takes traffic with no restart; `kill -9` of the control plane and of the
  tokenizer are survived the same way.
- `auto`: `scaling: {min_replicas: 1, max_replicas: 3, target_requests: 1, ...}`: a load step
  adds replicas, they go once the load stops; each decision is logged and exported on the
  launcher's `--metrics_port`.
- `zero`: `replicas: 0, min_replicas: 0`: the first request waits for a replica and answers.

A request is counted by the engine that served it: the HF engine logs `generate <id>` per
request into its log (`<log_dir>/<name>.log`; a dead process's log becomes `<name>.prev.log`).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import openai
import psutil
import pytest
import yaml

from services.launcher.processes import free_port
from tests.helpers.launcher import LauncherRun, launched
from tests.helpers.mesh import free_port_run
from tests.helpers.metrics import scrape, wait_until

pytestmark = [
    pytest.mark.slow,
    pytest.mark.heavy,
]  # a launcher with eight processes, minutes of load

STATIC, AUTO, ZERO = "tiny-llama", "auto", "zero"
ENGINE = f"huggingface-{STATIC}"
MESSAGES = [{"role": "user", "content": "Say something."}]
WORKERS = 4  # client threads on tiny-llama
# Every request sends the same prompt: under the default `prefix` policy it would stay on the
# replica holding it until that one is saturated (docs/routing.md), and an added replica would
# wait for a spill. These tests are about failover and scaling, so requests spread by load.
ROUTING = "least_loaded"


class Launcher(LauncherRun):
    """`python -m services.launcher` on a model list written into `tmp`."""

    def __init__(self, tmp: Path) -> None:
        self.logs = tmp / "logs"
        self.port, self.control_port, self.metrics_port = free_port(), free_port(), free_port()
        self.base_port = free_port_run(4)  # tokenizer, two tiny-llama replicas, one of `auto`
        models = [
            {"name": STATIC, "model": "tiny-llama", "replicas": 2, "routing": ROUTING},
            {
                "name": AUTO,
                "model": "tiny-llama",
                "routing": ROUTING,
                "scaling": {
                    "min_replicas": 1,
                    "max_replicas": 3,
                    "target_requests": 1,
                    "scale_up_delay": 2,
                    "scale_down_delay": 5,
                },
            },
            {
                "name": ZERO,
                "model": "tiny-llama",
                "replicas": 0,
                "scaling": {
                    "min_replicas": 0,
                    "max_replicas": 1,
                    "target_requests": 1,
                    "scale_down_delay": 5,
                },
            },
        ]
        model_list = tmp / "list.yaml"
        model_list.write_text(yaml.safe_dump({"models": models}))
        args = ["--model_list", str(model_list), "--no_vllm", "--port", str(self.port)]
        args += ["--base_port", str(self.base_port), "--control_plane_port", str(self.control_port)]
        args += ["--metrics_port", str(self.metrics_port), "--log_dir", str(self.logs)]
        args += ["--ready_timeout", "180"]
        super().__init__(tmp, args)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/openai/v1"

    def pid(self, port: int) -> int:
        """The pid of the supervised service on `port` (its process group's leader)."""
        for child in psutil.Process(self.process.pid).children():
            command = child.cmdline()
            if "--port" in command and command[command.index("--port") + 1] == str(port):
                return child.pid
        raise LookupError(port)

    def kill(self, port: int) -> float:
        """`kill -9` of a service's process group; the time it was sent."""
        os.killpg(self.pid(port), signal.SIGKILL)
        return time.monotonic()

    def served(self, name: str) -> int:
        """Generation requests the engine process `name` served (its log and its last life's)."""
        count = 0
        for log in (self.logs / f"{name}.log", self.logs / f"{name}.prev.log"):
            if log.exists():
                count += log.read_text(errors="replace").count(" generate ")
        return count

    def current(self, name: str) -> int:
        """Generation requests of the running life of `name` only."""
        log = self.logs / f"{name}.log"
        return log.read_text(errors="replace").count(" generate ") if log.exists() else 0

    def autoscaler(self) -> dict[str, float]:
        return scrape(f"http://127.0.0.1:{self.metrics_port}/metrics")


@dataclass
class Outcome:
    started: float
    ended: float
    stream: bool
    ok: bool
    first_chunk: bool  # a stream that had delivered content when it failed
    error: str = ""


class Traffic:
    """Chat completions from `workers` threads with the `openai` SDK (no SDK retries), streaming
    and not in turn, one after another per thread; every outcome is recorded with its times."""

    def __init__(self, url: str, model: str, workers: int, max_tokens: int) -> None:
        self.url, self.model, self.max_tokens = url, model, max_tokens
        self.outcomes: list[Outcome] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(workers)
        ]

    def _one(self, client: openai.OpenAI, stream: bool) -> Outcome:
        started = time.monotonic()
        first_chunk = False
        try:
            if stream:
                chunks = client.chat.completions.create(
                    model=self.model, messages=MESSAGES, max_tokens=self.max_tokens, stream=True
                )
                for chunk in chunks:
                    if chunk.choices and chunk.choices[0].delta.content:
                        first_chunk = True
            else:
                reply = client.chat.completions.create(
                    model=self.model, messages=MESSAGES, max_tokens=self.max_tokens
                )
                assert reply.choices[0].message.content is not None
        except Exception as error:  # noqa: BLE001 - every failure is counted, none hidden
            return Outcome(started, time.monotonic(), stream, False, first_chunk, repr(error))
        return Outcome(started, time.monotonic(), stream, True, first_chunk)

    def _run(self, index: int) -> None:
        client = openai.OpenAI(base_url=self.url, api_key="none", max_retries=0, timeout=60)
        stream = index % 2 == 0
        while not self._stop.is_set():
            outcome = self._one(client, stream)
            with self._lock:
                self.outcomes.append(outcome)
            stream = not stream

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(90)

    def snapshot(self) -> list[Outcome]:
        with self._lock:
            return list(self.outcomes)

    def ok(self) -> int:
        return sum(o.ok for o in self.snapshot())

    def more(self, count: int, timeout: float) -> bool:
        target = self.ok() + count
        return wait_until(lambda: self.ok() >= target, timeout)

    def failures(self, since: float = 0.0) -> list[Outcome]:
        return [o for o in self.snapshot() if not o.ok and o.ended >= since]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    with launched(Launcher(tmp_path_factory.mktemp("scale-out")), timeout=240) as launcher:
        yield launcher


def test_replicas_die_come_back_and_join_under_continuous_traffic(mesh):
    first, second, added = f"{ENGINE}-0", f"{ENGINE}-1", f"{ENGINE}-2"
    with Traffic(mesh.url, STATIC, workers=WORKERS, max_tokens=8) as traffic:
        assert traffic.more(20, 60), traffic.failures()[:3]
        assert wait_until(lambda: mesh.served(first) > 0 and mesh.served(second) > 0, 10)

        # kill -9 of one replica: the survivor carries the traffic within 5 s.
        killed_at = mesh.kill(mesh.base_port + 2)  # second replica (tokenizer, -0, -1)
        survivor_before = mesh.served(first)
        assert wait_until(lambda: mesh.served(first) >= survivor_before + 5, 5)
        failover = time.monotonic() - killed_at
        mesh.wait_for(rf"^hfmesh: {second} exited with -9 \(SIGKILL\)", timeout=5)
        mesh.wait_for(rf"^hfmesh: {second} restarted \(pid \d+", timeout=15)
        # ... and the restarted one takes traffic again.
        assert wait_until(lambda: mesh.current(second) > 0, 120), "no traffic after restart"
        back_at = time.monotonic() - killed_at
        # Every request that had not started streaming to its client succeeds (the gateway
        # retries it on the survivor, a non-streaming one even when its engine was generating);
        # only streams already running on the killed replica may be cut.
        lost = traffic.failures(since=killed_at)
        assert [o for o in lost if not (o.stream and o.started < killed_at)] == [], lost[:3]
        assert len(lost) <= WORKERS, lost
        print(
            f"\nreplica kill: the survivor served 5 more in {failover:.1f}s; the restarted one "
            f"served again after {back_at:.1f}s; {len(lost)} streams cut "
            f"({sum(o.first_chunk for o in lost)} of them after content had arrived)"
        )

        # A third replica by hand: it registers and takes traffic within 5 s, nothing restarts.
        pids = {p.pid for p in psutil.Process(mesh.process.pid).children()}
        asked = time.monotonic()
        result = mesh.scale("--add_replica", STATIC, "--ready_timeout", "180")
        assert result.returncode == 0, result.stderr
        assert f"{added} is serving" in result.stdout
        serving_at = time.monotonic()
        assert wait_until(lambda: mesh.served(added) > 0, 5), "the added replica got no traffic"
        print(
            f"added replica: serving {serving_at - asked:.1f}s after --add_replica, traffic "
            f"{time.monotonic() - serving_at:.1f}s later"
        )
        assert pids <= {p.pid for p in psutil.Process(mesh.process.pid).children()}

        # kill -9 of the control plane: restarted; traffic never stops, every replica keeps it.
        plane_killed = mesh.kill(mesh.control_port)
        mesh.wait_for(r"^hfmesh: control_plane restarted \(pid \d+", timeout=15)
        assert traffic.more(20, 20)
        print(f"control plane kill: {traffic.ok()} answered so far, ", end="")
        print(f"{len(traffic.failures(since=plane_killed))} failed since the kill")
        assert traffic.failures(since=plane_killed) == [], traffic.failures(plane_killed)[:3]
        counts = {name: mesh.served(name) for name in (first, second, added)}
        assert wait_until(
            lambda: all(mesh.served(name) > count for name, count in counts.items()), 15
        ), "a replica lost its traffic after the control plane restarted"

        # kill -9 of the tokenizer: restarted; requests answer again.
        tokenizer_killed = mesh.kill(mesh.base_port)
        mesh.wait_for(r"^hfmesh: tokenizer restarted \(pid \d+", timeout=15)
        assert traffic.more(20, 60)
        failed = traffic.failures(since=tokenizer_killed)
        window = (
            f"{min(o.started for o in failed) - tokenizer_killed:.1f}s to "
            f"{max(o.ended for o in failed) - tokenizer_killed:.1f}s after the kill"
            if failed
            else "none"
        )
        print(f"tokenizer kill: {len(failed)} failures ({window})")
        assert failed == [], failed[:3]
    print(f"{traffic.ok()} requests answered, {len(traffic.failures())} failed in all")


def test_a_load_step_adds_replicas_and_they_go_when_it_stops(mesh):
    assert mesh.autoscaler()['hfmesh_autoscaler_replicas{model="auto"}'] == 1
    with Traffic(mesh.url, AUTO, workers=6, max_tokens=64) as traffic:
        step = time.monotonic()
        up = mesh.wait_for(r"^.*autoscaler: auto 1 → (\d) replicas.*$", timeout=30)
        print(f"\nscale up after {time.monotonic() - step:.1f}s: {up[0]}")
        mesh.wait_for(r"^.*autoscaler: auto \d → 3 replicas.*$", timeout=60)
        names = [f"huggingface-{AUTO}-{i}" for i in (1, 2)]
        added = [int(mesh.wait_for(rf"^hfmesh: {n} added \(pid (\d+)", 5)[1]) for n in names]
        assert wait_until(lambda: all(mesh.served(n) > 0 for n in names), 180), names
        print(f"new replicas serving after {time.monotonic() - step:.1f}s")
        assert traffic.failures() == [], traffic.failures()[:3]
    stopped = time.monotonic()
    # Down to the highest count wanted over the down-delay: the load's tail may pass through 2.
    down = mesh.wait_for(r"^.*autoscaler: auto \d → 1 replicas.*$", timeout=40)
    print(f"back to 1 replica {time.monotonic() - stopped:.1f}s after the load stopped: {down[0]}")
    for name in names:
        mesh.wait_for(rf"^hfmesh: {name} removed$", timeout=5)
    metrics = mesh.autoscaler()
    assert metrics['hfmesh_autoscaler_replicas{model="auto"}'] == 1
    assert metrics['hfmesh_autoscaler_desired_replicas{model="auto"}'] == 1
    assert metrics['hfmesh_autoscaler_decisions_total{direction="up",model="auto"}'] >= 1
    assert metrics['hfmesh_autoscaler_decisions_total{direction="down",model="auto"}'] >= 1
    for pid in added:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_scale_from_zero_answers_the_first_request_and_goes_back_to_zero(mesh):
    assert mesh.autoscaler()['hfmesh_autoscaler_replicas{model="zero"}'] == 0
    client = openai.OpenAI(base_url=mesh.url, api_key="none", max_retries=0, timeout=120)
    asked = time.monotonic()
    reply = client.chat.completions.with_raw_response.create(
        model=ZERO, messages=MESSAGES, max_tokens=4
    )
    assert reply.http_response.status_code == 200
    print(f"\nfirst request from zero answered in {time.monotonic() - asked:.1f}s")
    mesh.wait_for(r"^.*autoscaler: zero 0 → 1 replicas.*$", timeout=5)
    answered = time.monotonic()
    mesh.wait_for(r"^.*autoscaler: zero 1 → 0 replicas.*$", timeout=30)
    mesh.wait_for(rf"^hfmesh: huggingface-{ZERO}-0 removed$", timeout=5)
    print(f"back to zero {time.monotonic() - answered:.1f}s after the answer")
    metrics = mesh.autoscaler()
    assert metrics['hfmesh_autoscaler_replicas{model="zero"}'] == 0
    assert metrics['hfmesh_autoscaler_decisions_total{direction="up",model="zero"}'] == 1
    assert metrics['hfmesh_autoscaler_decisions_total{direction="down",model="zero"}'] == 1
