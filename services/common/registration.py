"""A replica's registration with the control plane (`proto/registration.proto`).

`Registrar(...).register()` is called once the service is ready; it publishes the replica and
renews its lease in a background task at `renew_fraction` of the TTL the control plane grants.
A renewal answered NOT_FOUND (the control plane restarted, or the lease expired while it was
unreachable) registers again; so does the first contact after an outage longer than the TTL.
`drain()` registers again as draining (clients send no new calls) and `deregister()` withdraws
the replica and stops renewing. Every call carries a deadline.

A tokenizer serves several models: it registers once per model (`model` may be a list).
`advertised_address()` gives the address to register for a server bound to a wildcard host.
`Registration` is what a service knows before it binds (the control plane, what it serves,
an advertised host); `services.common.server.serve` turns it into a `Registrar` once the port
is known.

An unreachable control plane at start is a clear error: `register()` retries with backoff for
`connect_timeout` seconds (in Kubernetes and compose, services start in any order and the
control plane may come up a few seconds after a replica), then raises `RegistrationError`
naming the address. The process then exits non-zero, as a Kubernetes user expects of a
misconfigured dependency: the pod restarts with the message in its log, instead of serving
traffic nobody can discover. A malformed registration (INVALID_ARGUMENT) is raised at once.
Failures after start (renewals, drain, deregister) are logged, never raised: the replica keeps
serving, and a lease nobody renews expires by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass

import grpc

from services.common.pb import registration_pb2 as pb
from services.common.pb import registration_pb2_grpc as pb_grpc
from services.common.tls import TlsConfig, aio_channel

logger = logging.getLogger(__name__)

#: A restarted control plane is reached within a couple of seconds of coming back.
CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
]


def advertised_address(bind_host: str, port: int, control_plane: str) -> str:
    """The `host:port` others dial: the bind host, unless it is a wildcard (`0.0.0.0`, `::`);
    then this machine's address on the route to the control plane (in Kubernetes, the pod IP;
    locally, 127.0.0.1 when the control plane is there)."""
    if bind_host not in ("", "0.0.0.0", "::", "[::]"):
        bare = bind_host.strip("[]")
        return f"[{bare}]:{port}" if ":" in bare else f"{bare}:{port}"
    host, _, control_port = control_plane.rpartition(":")
    family, kind, proto, _, target = socket.getaddrinfo(
        host.strip("[]"), int(control_port), type=socket.SOCK_DGRAM
    )[0]
    with socket.socket(family, kind, proto) as probe:
        probe.connect(target)  # a datagram socket sends nothing: this only picks a route
        local = probe.getsockname()[0]
    return f"[{local}]:{port}" if ":" in local else f"{local}:{port}"


class RegistrationError(Exception):
    """The control plane refused the registration or could not be reached."""


@dataclass(frozen=True)
class Registration:
    """A replica's registration before its port is known: `registrar(host, port)` completes it."""

    control_plane: str
    service: str  # "engine" | "tokenizer"
    models: tuple[str, ...]
    backend: str = ""  # "vllm" | "huggingface" for an engine
    advertise_host: str | None = None
    connect_timeout: float = 30.0
    tls: TlsConfig | None = None  # of the channel to the control plane (None: plain)

    def registrar(self, bind_host: str, port: int) -> Registrar:
        try:
            address = advertised_address(self.advertise_host or bind_host, port, self.control_plane)
        except (OSError, ValueError) as error:
            raise RegistrationError(
                f"cannot find this replica's address toward the control plane at "
                f"{self.control_plane} ({error}): is --control_plane right, or give "
                "--advertise_host"
            ) from None
        return Registrar(
            self.control_plane,
            service=self.service,
            model=self.models,
            backend=self.backend,
            address=address,
            connect_timeout=self.connect_timeout,
            tls=self.tls,
        )


class Registrar:
    def __init__(
        self,
        control_plane: str,
        *,
        service: str,
        model: str | Sequence[str],
        address: str,
        backend: str = "",
        call_timeout: float = 3.0,
        connect_timeout: float = 30.0,
        renew_fraction: float = 1 / 3,
        tls: TlsConfig | None = None,
    ) -> None:
        self.control_plane = control_plane
        self.models = (model,) if isinstance(model, str) else tuple(model)
        self.service, self.backend, self.address = service, backend, address
        self.call_timeout = call_timeout
        self.connect_timeout = connect_timeout
        self.renew_fraction = renew_fraction
        self.draining = False
        self.leases: dict[str, str] = {}  # model → lease id
        self.ttl_seconds = 0.0
        self._channel = aio_channel(control_plane, tls, CHANNEL_OPTIONS)
        self._stub = pb_grpc.RegistrationStub(self._channel)
        self._renewer: asyncio.Task[None] | None = None
        #: One call sequence at a time; the renewer is cancelled only between them, so no
        #: registration lands on the control plane without its lease id being recorded here.
        self._lock = asyncio.Lock()
        self._last_contact = 0.0

    async def register(self) -> None:
        """Publish every model's registration and start renewing; see the module docstring."""
        deadline = time.monotonic() + self.connect_timeout
        backoff = 0.2
        while True:
            try:
                async with self._lock:
                    await self._register_all()
                break
            except grpc.aio.AioRpcError as error:
                if error.code() not in (
                    grpc.StatusCode.UNAVAILABLE,
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                ):
                    raise RegistrationError(
                        f"the control plane at {self.control_plane} refused {self.address}: "
                        f"{error.code().name}: {error.details()}"
                    ) from None
                if time.monotonic() + backoff > deadline:
                    raise RegistrationError(
                        f"the control plane at {self.control_plane} is unreachable "
                        f"(tried for {self.connect_timeout:.0f}s): is it running, and is "
                        "--control_plane right?"
                    ) from None
                logger.warning(
                    "control plane at %s unreachable; retrying in %.1fs",
                    self.control_plane,
                    backoff,
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
        logger.info(
            "registered %s %s at %s with %s",
            self.service,
            ",".join(self.models),
            self.address,
            self.control_plane,
        )
        if self._renewer is None:
            self._renewer = asyncio.ensure_future(self._renew_forever())

    async def drain(self) -> None:
        """Stay published, marked draining (call when SIGTERM arrives, before stopping)."""
        self.draining = True
        try:
            async with self._lock:
                await self._register_all()
        except grpc.aio.AioRpcError as error:
            logger.warning("could not mark %s draining: %s", self.address, error.code().name)

    async def deregister(self) -> None:
        """Withdraw every registration now, stop renewing and close the channel."""
        async with self._lock:
            if self._renewer is not None:
                self._renewer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._renewer
                self._renewer = None
        for model, lease_id in list(self.leases.items()):
            try:
                await self._stub.Deregister(
                    pb.DeregisterRequest(lease_id=lease_id), timeout=self.call_timeout
                )
                del self.leases[model]
            except grpc.aio.AioRpcError as error:
                logger.warning(
                    "could not deregister %s (%s): its lease will expire",
                    self.address,
                    error.code().name,
                )
        await self._channel.close()

    async def _register_all(self) -> None:
        for model in self.models:
            request = pb.RegisterRequest(
                service=self.service,
                model=model,
                backend=self.backend,
                address=self.address,
                draining=self.draining,
            )
            lease = await self._stub.Register(request, timeout=self.call_timeout)
            self.leases[model] = lease.lease_id
            self.ttl_seconds = lease.ttl_seconds
        self._last_contact = time.monotonic()

    async def _renew_all(self) -> None:
        if time.monotonic() - self._last_contact > self.ttl_seconds:
            logger.info(
                "control plane at %s is back: registering %s again",
                self.control_plane,
                self.address,
            )
            await self._register_all()
            return
        for lease_id in list(self.leases.values()):
            try:
                await self._stub.Renew(
                    pb.RenewRequest(lease_id=lease_id), timeout=self.call_timeout
                )
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.NOT_FOUND:
                    raise
                logger.info(
                    "lease of %s unknown to the control plane (restarted?): registering again",
                    self.address,
                )
                await self._register_all()
                return
        self._last_contact = time.monotonic()

    async def _renew_forever(self) -> None:
        failing = False
        while True:
            interval = self.ttl_seconds * self.renew_fraction
            await asyncio.sleep(min(interval, 1.0) if failing else interval)
            try:
                async with self._lock:
                    await self._renew_all()
                if failing:
                    logger.info("control plane at %s reachable again", self.control_plane)
                failing = False
            except grpc.aio.AioRpcError as error:
                if not failing:
                    logger.warning(
                        "cannot renew %s's lease at %s (%s); retrying",
                        self.address,
                        self.control_plane,
                        error.code().name,
                    )
                failing = True
