"""The autoscaler on a fake clock and a fake load; the gateway's metrics read over HTTP."""

from __future__ import annotations

import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from services.common.engine import Task
from services.common.model_list import Endpoints, MeshPlan, ModelEntry, Scaling
from services.gateway.metrics import GatewayMetrics
from services.gateway.routing import ReplicaRouter
from services.launcher.autoscaler import Autoscaler, GatewayLoad, LoadUnavailable
from services.launcher.processes import free_port


class Harness:
    """An autoscaler over one model, with the clock and the load in the test's hands."""

    def __init__(self, scaling: Scaling, replicas: int = 1) -> None:
        self.now = 0.0
        self.load: dict[str, float] = {"m": 0.0}
        self.calls: list[tuple[str, int]] = []
        entries = [
            ModelEntry("m", "/m", Task.TEXT_EMBEDDING, replicas=replicas, scaling=scaling),
            ModelEntry("fixed", "/f", Task.TEXT_EMBEDDING, replicas=2),
        ]
        self.scaler = Autoscaler(
            entries, lambda: dict(self.load), self.record, clock=lambda: self.now
        )

    def record(self, model: str, replicas: int) -> None:
        self.calls.append((model, replicas))

    def at(self, now: float, load: float) -> int:
        """Tick at `now` with `load`; the replica count after it."""
        self.now = now
        self.load["m"] = load
        self.scaler.tick()
        return self.scaler.models["m"].replicas

    def metric(self, name: str, **labels: str) -> float | None:
        return self.scaler.registry.get_sample_value(name, {"model": "m", **labels})


STEP = Scaling(
    min_replicas=1, max_replicas=3, target_requests=2, scale_up_delay=10, scale_down_delay=30
)


def test_a_load_step_adds_replicas_after_the_up_delay_and_removes_them_after_the_down_delay(
    caplog,
):
    h = Harness(STEP)
    caplog.set_level(logging.INFO, "services.launcher.autoscaler")
    assert h.at(0, 6) == 1  # desired 3 from now on
    assert h.at(5, 6) == 1
    assert h.at(9.9, 6) == 1  # not before the up-delay
    assert h.metric("hfmesh_autoscaler_desired_replicas") == 3
    assert h.at(10, 6) == 3
    assert h.calls == [("m", 3)]
    assert "autoscaler: m 1 → 3 replicas (load 6, target 2 per replica)" in caplog.text
    assert h.metric("hfmesh_autoscaler_decisions_total", direction="up") == 1
    assert h.metric("hfmesh_autoscaler_replicas") == 3
    assert h.metric("hfmesh_autoscaler_load") == 6

    assert h.at(11, 0) == 3  # the load stops: desired is min_replicas
    assert h.at(40.9, 0) == 3  # not before the down-delay
    assert h.at(41, 0) == 1
    assert h.calls == [("m", 3), ("m", 1)]
    assert h.metric("hfmesh_autoscaler_decisions_total", direction="down") == 1
    assert "autoscaler: m 3 → 1 replicas (load 0, target 2 per replica)" in caplog.text


def test_a_reading_back_at_the_current_count_restarts_the_wait():
    h = Harness(STEP)
    h.at(0, 6)
    h.at(5, 2)  # desired 1: the burst is over
    h.at(6, 6)
    assert h.at(15, 6) == 1  # 9 s since the burst came back
    assert h.at(16, 6) == 3


def test_it_scales_to_the_count_that_held_through_the_delay():
    h = Harness(STEP)
    h.at(0, 6)  # desired 3
    h.at(5, 4)  # desired 2
    assert h.at(10, 6) == 2  # every reading of the last 10 s asked for at least 2
    h.at(20, 0)  # desired 1
    h.at(30, 3)  # desired 2: not below the current count, the down-wait restarts
    h.at(31, 0)
    assert h.at(60, 0) == 2
    assert h.at(61, 0) == 1


def test_crossing_the_current_count_restarts_the_wait_on_the_other_side():
    h = Harness(STEP, replicas=2)
    h.at(0, 6)  # desired 3: the up-wait starts
    h.at(5, 0)  # desired 1: the down-wait starts now, not at 0
    assert h.at(34, 0) == 2
    assert h.at(35, 0) == 1


def test_min_and_max_bound_the_count():
    h = Harness(STEP, replicas=2)
    h.at(0, 1000)
    assert h.at(10, 1000) == 3
    assert h.metric("hfmesh_autoscaler_desired_replicas") == 3
    h.at(20, 0)
    assert h.at(50, 0) == 1
    assert h.at(500, 0) == 1
    assert h.calls == [("m", 3), ("m", 1)]


def test_scale_to_zero_and_back():
    h = Harness(Scaling(min_replicas=0, max_replicas=2, target_requests=4, scale_up_delay=10))
    assert h.at(0, 0) == 1
    assert h.at(29, 0) == 1
    assert h.at(30, 0) == 0  # idle for the down-delay (30 s by default)
    assert h.at(100, 0) == 0
    assert h.at(101, 1) == 1  # one request waits: a replica at once, no up-delay
    assert h.at(102, 8) == 1  # beyond one, the up-delay again
    assert h.at(112, 8) == 2
    assert h.calls == [("m", 0), ("m", 1), ("m", 2)]


def test_no_reading_changes_nothing(caplog):
    h = Harness(STEP, replicas=3)

    def down() -> dict[str, float]:
        raise LoadUnavailable("cannot read http://gateway/metrics: refused")

    h.scaler.load_source = down
    for now in (0, 100, 200):
        assert h.at(now, 0) == 3
    assert "cannot read http://gateway/metrics: refused; replica counts unchanged" in caplog.text
    h.scaler.load_source = lambda: {"fixed": 5.0}  # the gateway does not route "m"
    assert h.at(300, 0) == 3 and h.at(400, 0) == 3
    assert h.calls == []
    assert set(h.scaler.models) == {"m"}  # entries without scaling are not autoscaled


def test_a_failed_scale_keeps_the_count_and_is_retried(caplog):
    h = Harness(STEP)
    failing = [True]

    def flaky(model: str, replicas: int) -> None:
        if failing[0]:
            raise OSError("no free port")
        h.record(model, replicas)

    h.scaler.scale = flaky
    h.at(0, 6)
    assert h.at(10, 6) == 1
    assert "m 1 → 3 replicas failed (no free port)" in caplog.text
    failing[0] = False
    assert h.at(11, 6) == 3
    assert h.metric("hfmesh_autoscaler_decisions_total", direction="up") == 1


class _Text(BaseHTTPRequestHandler):
    body = b""

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def metrics_server():
    """Serves `_Text.body` at http://127.0.0.1:PORT/metrics."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Text)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/metrics"
    server.shutdown()
    server.server_close()


async def test_gateway_load_reads_the_gateways_metrics(metrics_server):
    plan = MeshPlan(
        models=[
            ModelEntry("llm", "/m", Task.TEXT_GENERATION),
            ModelEntry("embed", "/e", Task.TEXT_EMBEDDING),
        ],
        endpoints={
            "llm": Endpoints(["127.0.0.1:1"], {"huggingface": ["127.0.0.1:2", "127.0.0.1:3"]}),
            "embed": Endpoints(["127.0.0.1:1"], {"huggingface": ["127.0.0.1:4"]}),
        },
    )
    routes = ReplicaRouter(plan)
    await routes.start()
    try:
        routes.replicas["127.0.0.1:2"].in_flight = 3
        routes.replicas["127.0.0.1:3"].in_flight = 1
        routes.replicas["127.0.0.1:1"].in_flight = 7  # the tokenizer's load is not the model's
        routes.by_name["llm"].waiting = 2
        _Text.body = GatewayMetrics(routes).render()
    finally:
        await routes.close()
    assert b'hfmesh_gateway_model_requests{model="llm",state="waiting"} 2.0' in _Text.body
    assert GatewayLoad(metrics_server)() == {"llm": 6.0, "embed": 0.0}


def test_gateway_load_that_cannot_be_read_is_load_unavailable(metrics_server):
    with pytest.raises(LoadUnavailable, match="cannot read http://127.0.0.1:"):
        GatewayLoad(f"http://127.0.0.1:{free_port()}/metrics", timeout=2)()
    _Text.body = b"not { prometheus text"
    with pytest.raises(LoadUnavailable, match="cannot read"):
        GatewayLoad(metrics_server)()
