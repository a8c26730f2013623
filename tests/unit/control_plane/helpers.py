"""Helpers of the control plane tests: tiny named backends, polling, a planned model list, control
planes restarted on their port (also used by the registration client's and the gateway's tests).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import grpc
import yaml
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from services.control_plane.app import ControlPlane
from services.control_plane.settings import ControlPlaneSettings

WHO = "/hfmesh.test.Echo/Who"


class Backend:
    """A gRPC server that answers `Who` with its name and serves grpc.health.v1."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.server = grpc.aio.server()
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)

        async def who(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            return name.encode()

        handler = grpc.unary_unary_rpc_method_handler(who)
        self.server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler("hfmesh.test.Echo", {"Who": handler})]
        )
        self.port = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> Backend:
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()
        await self.set_serving(True)
        return self

    async def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse
        await self.health.set("", status.SERVING if serving else status.NOT_SERVING)


async def eventually(check: Callable[[], Awaitable[bool] | bool], timeout: float = 5.0) -> None:
    """Poll `check` until it is true; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout}s")
        await asyncio.sleep(0.02)


def mesh_file(tmp_path, endpoints: dict[str, list[str]] | None = None) -> str:
    """A planned model list: `m` (HF engine, no fallback) and `g` (vLLM, HF fallback)."""
    m = {
        "name": "m",
        "source": "/models/m",
        "task": "text_embedding",
        "backend": "huggingface",
        "endpoints": {"tokenizer": [], "huggingface": list((endpoints or {}).get("m", []))},
    }
    g = {
        "name": "g",
        "source": "/models/g",
        "task": "text_generation",
        "backend": "vllm",
        "fallback": "huggingface",
        "endpoints": {"tokenizer": [], "vllm": [], "huggingface": []},
    }
    path = tmp_path / "mesh.yaml"
    path.write_text(yaml.safe_dump({"models": [m, g]}))
    return str(path)


class Planes:
    """Control planes started in process with `start(port=0, **settings)`; `stop_all()`."""

    def __init__(self, model_list: str) -> None:
        self.model_list = model_list
        self.started: list[ControlPlane] = []

    async def start(self, port: int = 0, **overrides) -> ControlPlane:
        values = {
            "host": "127.0.0.1",
            "port": port,
            "health_interval": 0,
            "model_list": self.model_list,
            **overrides,
        }
        plane = ControlPlane(ControlPlaneSettings(**values))
        await plane.start()
        self.started.append(plane)
        return plane

    async def stop_all(self) -> None:
        for plane in self.started:
            await plane.stop(None)
