"""Routing by model name over the mesh model list.

One gRPC channel per service address, shared by every model it serves, each
with a background `grpc.health.v1.Health/Watch`. A model's engines are kept as
an ordered list of backends (the resolved one first, then the fallback): the
first backend with an available replica wins, and within it the replica with
the fewest requests in flight. A replica whose health is not SERVING, or whose
call just failed with UNAVAILABLE before any output, is skipped.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.engine import Task
from services.common.errors import NotFound, Unavailable
from services.common.model_list import MeshPlan, ModelEntry
from services.common.pb import inference_pb2_grpc as pb_grpc
from services.common.server import MAX_MESSAGE_BYTES

logger = logging.getLogger(__name__)

WATCH_SECONDS = 300.0  # each Watch call's deadline; it is renewed right away
FAILURE_COOLDOWN = 2.0  # seconds a replica is skipped after an UNAVAILABLE call
_ticket = itertools.count()


class Replica:
    """One service instance: its channel, health, and load."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.channel = grpc.aio.insecure_channel(
            address,
            options=[
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.keepalive_time_ms", 30_000),
            ],
        )
        self.stub = pb_grpc.GRPCInferenceServiceStub(self.channel)
        self.serving = False
        self.in_flight = 0
        self.failed_until = 0.0
        self._watch: asyncio.Task | None = None
        self.changed = asyncio.Event()

    @property
    def available(self) -> bool:
        return self.serving and time.monotonic() >= self.failed_until

    def mark_failed(self) -> None:
        self.failed_until = time.monotonic() + FAILURE_COOLDOWN

    def start(self) -> None:
        self._watch = asyncio.ensure_future(self._watch_health())

    async def _watch_health(self) -> None:
        stub = health_pb2_grpc.HealthStub(self.channel)
        backoff = 0.1
        while True:
            try:
                # types-grpcio-health-checking declares HealthStub without its methods.
                watch = stub.Watch  # type: ignore[attr-defined]
                call = watch(health_pb2.HealthCheckRequest(service=""), timeout=WATCH_SECONDS)
                async for reply in call:
                    self._set_serving(reply.status == health_pb2.HealthCheckResponse.SERVING)
                    backoff = 0.1
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                    self._set_serving(False)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 2.0)

    def _set_serving(self, serving: bool) -> None:
        if serving != self.serving:
            logger.info("%s is %s", self.address, "SERVING" if serving else "NOT_SERVING")
        self.serving = serving
        if serving:
            self.failed_until = 0.0
        self.changed.set()
        self.changed = asyncio.Event()

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            await asyncio.gather(self._watch, return_exceptions=True)
        await self.channel.close()


def _least_loaded(replicas: list[Replica]) -> Replica:
    low = min(r.in_flight for r in replicas)
    tied = [r for r in replicas if r.in_flight == low]
    return tied[next(_ticket) % len(tied)]


@dataclass
class ModelRoute:
    entry: ModelEntry
    tokenizers: list[Replica] = field(default_factory=list)
    engines: list[tuple[str, list[Replica]]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def task(self) -> Task:
        return self.entry.task

    def engine(self, exclude: set[Replica] | frozenset = frozenset()) -> Replica:
        for _, replicas in self.engines:
            live = [r for r in replicas if r.available and r not in exclude]
            if live:
                return _least_loaded(live)
        backends = ", ".join(b for b, _ in self.engines) or "none configured"
        raise Unavailable(f"no engine is ready for model '{self.name}' (backends: {backends})")

    def tokenizer(self) -> Replica:
        live = [r for r in self.tokenizers if r.available]
        if not live:
            detail = "" if self.tokenizers else " (none configured)"
            raise Unavailable(f"no tokenizer is ready for model '{self.name}'{detail}")
        return _least_loaded(live)

    @property
    def ready(self) -> bool:
        engine = any(r.available for _, rs in self.engines for r in rs)
        return engine and any(r.available for r in self.tokenizers)

    @property
    def backend(self) -> str | None:
        """The backend a request would go to now."""
        for backend, replicas in self.engines:
            if any(r.available for r in replicas):
                return backend
        return None


class ReplicaRouter:
    """Every served model's route (by model name) to its tokenizer and engine replicas;
    owns the channels."""

    def __init__(self, plan: MeshPlan | None) -> None:
        self.plan = plan or MeshPlan(models=[])
        self.replicas: dict[str, Replica] = {}
        self.by_name: dict[str, ModelRoute] = {}

    def _replica(self, address: str) -> Replica:
        if address not in self.replicas:
            self.replicas[address] = Replica(address)
        return self.replicas[address]

    async def start(self) -> None:
        for entry in self.plan.models:
            endpoints = self.plan.endpoints.get(entry.name)
            route = ModelRoute(entry)
            if endpoints is not None:
                route.tokenizers = [self._replica(a) for a in endpoints.tokenizer]
                backends = list(entry.backends) + [
                    b for b in endpoints.engines if b not in entry.backends
                ]
                route.engines = [
                    (b, [self._replica(a) for a in endpoints.engines[b]])
                    for b in backends
                    if endpoints.engines.get(b)
                ]
            self.by_name[entry.name] = route
        for replica in self.replicas.values():
            replica.start()

    async def close(self) -> None:
        await asyncio.gather(*(r.close() for r in self.replicas.values()), return_exceptions=True)

    def route(self, name: str) -> ModelRoute:
        try:
            return self.by_name[name]
        except KeyError:
            known = ", ".join(self.by_name) or "none"
            raise NotFound(f"The model '{name}' does not exist (served models: {known})") from None

    @property
    def ready(self) -> bool:
        return bool(self.by_name) and all(route.ready for route in self.by_name.values())

    async def wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self.ready:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            events = [r.changed.wait() for r in self.replicas.values()]
            if not events:
                return False
            waits = [asyncio.ensure_future(e) for e in events]
            await asyncio.wait(waits, timeout=left, return_when=asyncio.FIRST_COMPLETED)
            for w in waits:
                w.cancel()
        return True
