"""gRPC server runner shared by every service.

`GrpcServiceRunner.start()` binds (port 0 picks a free port) and returns the
bound port. Health (`grpc.health.v1`) answers NOT_SERVING until `set_serving(True)`
— engines call it once their model is loaded — and NOT_SERVING again while
draining. Reflection is on. SIGTERM/SIGINT → NOT_SERVING and new inference calls refused
with UNAVAILABLE at once → `server.stop(grace)`, which waits for calls in flight (at most
`--drain_grace`), not for health watches (they end when draining starts).

With a `tls` configuration the port speaks TLS, mutual TLS when it names a CA
(`services.common.tls`: certificate files re-read when they change); without one it is plain.

`serve(..., registration=...)` registers the replica with the control plane once it is
SERVING and withdraws it on SIGTERM before the server stops (`services.common.registration`).

`serve_engine` serves an `Engine` with the one watchdog: an engine that is no
longer `healthy()` turns health NOT_SERVING, drains the server and makes the
process exit non-zero, so an orchestrator restarts it.

`ErrorInterceptor` also binds each call's request id and deadline (`time_left` gives
an outgoing call what is left of it), and is the one place where exceptions become gRPC statuses
(DESIGN.md §3): `HfmeshError` → its status and message; anything else →
INTERNAL with a generic message, the traceback only in the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.common import heap, tracing
from services.common.errors import GENERIC_INTERNAL_MESSAGE, HfmeshError, Unavailable
from services.common.health import HealthServicer
from services.common.interceptors import streaming_handler
from services.common.logs import REQUEST_ID_HEADER, new_request_id, request_id_var
from services.common.pb import inference_pb2, pool
from services.common.registration import Registrar, Registration, RegistrationError
from services.common.tls import CertificateFiles, TlsConfig

if TYPE_CHECKING:
    from services.common.engine import Engine

logger = logging.getLogger(__name__)

#: Default largest gRPC message of every hop (servers and the gateway's channels), as KServe.
MAX_MESSAGE_BYTES = 8 * 1024 * 1024
#: The shortest keepalive ping interval a server accepts from its clients.
MIN_CLIENT_PING_MS = 10_000
#: How often `serve_engine` asks a serving engine whether it is still healthy.
ENGINE_HEALTH_POLL_SECONDS = 0.5
OIP_SERVICE = inference_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name


#: The monotonic deadline of the call being served (None: the caller set none).
call_deadline_var: ContextVar[float | None] = ContextVar("call_deadline", default=None)


def time_left(cap: float) -> float:
    """Seconds an outgoing call made while serving a call may take: what is left of the
    caller's deadline (so deadlines shrink hop by hop), at most `cap`."""
    deadline = call_deadline_var.get()
    if deadline is None:
        return cap
    return max(0.001, min(cap, deadline - time.monotonic()))


def _bind_call(context: grpc.aio.ServicerContext) -> None:
    request_id_var.set(request_id_from(context))
    remaining = context.time_remaining()
    call_deadline_var.set(None if remaining is None else time.monotonic() + remaining)


def request_id_from(context: grpc.aio.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_HEADER and isinstance(value, str) and value:
            return value
    return new_request_id()


async def _translate(error: BaseException, context: grpc.aio.ServicerContext, method: str) -> None:
    if isinstance(error, HfmeshError):
        if error.retry_after is not None:
            context.set_trailing_metadata((("retry-after", str(int(max(1, error.retry_after)))),))
        await context.abort(error.grpc_code, error.message)
    logger.exception("unhandled error in %s", method)
    await context.abort(grpc.StatusCode.INTERNAL, GENERIC_INTERNAL_MESSAGE)


#: Calls refused once a server drains (health, metadata and reflection still answer).
WORK_METHODS = (f"/{OIP_SERVICE}/ModelInfer", f"/{OIP_SERVICE}/ModelStreamInfer")


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Maps errors to statuses and binds the request id for logging. Once `draining()` is
    true, new inference calls are refused with UNAVAILABLE (+ `retry-after`); calls already
    running go on."""

    def __init__(self, draining: Callable[[], bool] = lambda: False) -> None:
        self.draining = draining
        self.active = 0  # inference calls running
        self.idle = asyncio.Event()
        self.idle.set()

    @contextmanager
    def _work(self, method: str) -> Iterator[None]:
        if method not in WORK_METHODS:
            yield
            return
        if self.draining():
            raise Unavailable("the server is draining (shutting down); send this elsewhere")
        self.active += 1
        self.idle.clear()
        try:
            yield
        finally:
            self.active -= 1
            if not self.active:
                self.idle.set()

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        if handler.unary_unary:
            inner = handler.unary_unary

            async def unary_unary(request, context):
                _bind_call(context)
                try:
                    with self._work(method):
                        return await inner(request, context)
                except (asyncio.CancelledError, grpc.aio.AbortError):
                    raise
                except Exception as error:  # noqa: BLE001 - the translation point
                    await _translate(error, context, method)

            return grpc.unary_unary_rpc_method_handler(
                unary_unary, handler.request_deserializer, handler.response_serializer
            )
        if handler.stream_stream or handler.unary_stream:
            streaming = handler.stream_stream or handler.unary_stream

            async def stream(request, context):
                _bind_call(context)
                try:
                    with self._work(method):
                        result = streaming(request, context)
                        if inspect.isawaitable(result):  # handlers answering by context.write()
                            await result
                            return
                        async for response in result:
                            yield response
                except (asyncio.CancelledError, grpc.aio.AbortError):
                    raise
                except Exception as error:  # noqa: BLE001
                    await _translate(error, context, method)

            return streaming_handler(handler, stream)
        return handler


def _reflection_pool():
    """hfmesh's pool (see scripts/gen_proto.py) plus the health and reflection protos."""
    from grpc_reflection.v1alpha import reflection_pb2

    for module in (health_pb2, reflection_pb2):
        try:
            pool.POOL.FindFileByName(module.DESCRIPTOR.name)
        except KeyError:
            pool.POOL.AddSerializedFile(module.DESCRIPTOR.serialized_pb)
    return pool.POOL


class GrpcServiceRunner:
    """Owns one `grpc.aio` server: health, reflection, error interceptor, drain."""

    def __init__(
        self,
        *,
        host: str = "0.0.0.0",
        port: int = 0,
        grace_seconds: float = 30.0,
        extra_service_names: Iterable[str] = (),
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        min_client_ping_ms: int = MIN_CLIENT_PING_MS,
        interceptors: Iterable[grpc.aio.ServerInterceptor] = (),
        tls: TlsConfig | None = None,
        settle_heap: bool = False,
    ) -> None:
        self.host = host
        #: The process is this service's own: once loaded, its heap is frozen (`heap.settle`).
        self.settle_heap = settle_heap
        #: TLS (mutual with a CA) on the port, the files re-read when they change; None: plain.
        self.certificates = CertificateFiles(tls) if tls is not None and tls.enabled else None
        self.port = port
        self.grace_seconds = grace_seconds
        self.draining = False
        self.interceptor = ErrorInterceptor(lambda: self.draining)
        self.server = grpc.aio.server(
            interceptors=[*tracing.server_interceptors(), *interceptors, self.interceptor],
            options=[
                ("grpc.max_send_message_length", max_message_bytes),
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.so_reuseport", 0),
                # Callers keep health watches open and send keepalive pings (the gateway
                # every 30 s); gRPC's default (one ping per 5 min without data) answers them
                # with a GOAWAY "too_many_pings" that fails every call on the connection.
                ("grpc.http2.min_ping_interval_without_data_ms", min_client_ping_ms),
                ("grpc.keepalive_permit_without_calls", 1),
                # ... and a client pinging more often than that is not sent away for it either.
                ("grpc.http2.max_ping_strikes", 0),
            ],
        )
        self.health = HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self._service_names = [OIP_SERVICE, *extra_service_names]
        reflection.enable_server_reflection(
            [*self._service_names, health.SERVICE_NAME, reflection.SERVICE_NAME],
            self.server,
            pool=_reflection_pool(),
        )
        self._stopping = asyncio.Event()
        self.bound_port: int | None = None

    def add(self, register: Callable[[grpc.aio.Server], Any]) -> None:
        """Register a servicer: `runner.add(lambda s: add_XServicer_to_server(x, s))`."""
        register(self.server)

    async def start(self) -> int:
        address = f"{self.host}:{self.port}"
        if self.certificates is None:
            self.bound_port = self.server.add_insecure_port(address)
        else:
            credentials = self.certificates.credentials()
            self.bound_port = self.server.add_secure_port(address, credentials)
        if not self.bound_port:
            raise OSError(f"cannot bind {address}")
        await self.server.start()
        await self.set_serving(False)
        logger.info(
            "gRPC listening on %s:%d (%s)",
            self.host,
            self.bound_port,
            "plain"
            if self.certificates is None
            else "mutual TLS"
            if self.certificates.config.mutual
            else "TLS",
        )
        return self.bound_port

    async def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", *self._service_names):
            await self.health.set(name, status)

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)

    def request_stop(self) -> None:
        self._stopping.set()

    @property
    def stop_requested(self) -> bool:
        return self._stopping.is_set()

    async def wait_for_stop_signal(self) -> None:
        await self._stopping.wait()

    async def start_draining(self) -> None:
        """Health NOT_SERVING and new inference calls refused; calls in flight go on."""
        self.draining = True
        await self.set_serving(False)

    async def drain_and_stop(self) -> None:
        """Refuse new work (UNAVAILABLE, health NOT_SERVING) while the inference calls in
        flight finish, for at most the grace; then stop the server (cancelling what is
        left). The server keeps answering health and refusals meanwhile, so a caller sees
        NOT_SERVING / UNAVAILABLE rather than a closed port."""
        logger.info("draining: health NOT_SERVING, stopping with %.0fs grace", self.grace_seconds)
        started = time.monotonic()
        await self.start_draining()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.interceptor.idle.wait(), self.grace_seconds)
        left = max(0.0, self.grace_seconds - (time.monotonic() - started))
        await self.health.close_watches()  # watches (which saw NOT_SERVING) end only now
        await self.server.stop(left)


async def _unless_stopped(runner: GrpcServiceRunner, work: Awaitable[None]) -> bool:
    """Await `work`: True once done, False when a stop was asked for first (`work` cancelled)."""
    task = asyncio.ensure_future(work)
    stop = asyncio.ensure_future(runner.wait_for_stop_signal())
    done, _ = await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
    if task not in done:
        task.cancel()
        return False
    stop.cancel()
    task.result()
    return True


async def serve(
    runner: GrpcServiceRunner,
    load: Callable[[], Awaitable[None]] | None = None,
    shutdown: Callable[[], Awaitable[None]] | None = None,
    on_bound: Callable[[int], None] | None = None,
    registration: Registration | None = None,
) -> None:
    """Start, load (health NOT_SERVING meanwhile), serve until SIGTERM, drain, shut down.

    A failed load is fatal: the process exits non-zero so an orchestrator restarts it.
    With a `registration` the replica registers with the control plane once SERVING; on
    SIGTERM it marks itself draining and deregisters before the server stops, so clients send
    it no new calls while those in flight finish within the grace. A control plane that
    cannot be reached at start stops the server and raises `RegistrationError`.
    """
    port = await runner.start()
    runner.install_signal_handlers()
    if on_bound:
        on_bound(port)
    registrar: Registrar | None = None
    try:
        if load is not None and not await _unless_stopped(runner, load()):
            await runner.drain_and_stop()
            return
        if runner.settle_heap:  # what the load built, out of the collector's way
            heap.settle()
        await runner.set_serving(True)
        logger.info("serving on port %d", port)
        try:
            registrar = registration.registrar(runner.host, port) if registration else None
            if registrar is None or await _unless_stopped(runner, registrar.register()):
                await runner.wait_for_stop_signal()
                await runner.start_draining()  # before any control-plane call: health first
                if registrar is not None:
                    await registrar.drain()
        finally:
            if registrar is not None:
                await registrar.deregister()
            await runner.drain_and_stop()
    finally:
        if shutdown is not None:
            await shutdown()


async def _watch_engine(engine: Engine, runner: GrpcServiceRunner, poll_seconds: float) -> bool:
    """Turn a dead engine into NOT_SERVING and a stop; True when it died on its own.

    An engine that stops being healthy once a stop was asked for (a SIGTERM to
    the whole process group also stops vLLM's engine core) has not died.
    """
    while engine.healthy():
        await asyncio.sleep(poll_seconds)
    await asyncio.sleep(0)  # let a pending signal handler run first
    if runner.stop_requested:
        return False
    logger.error("the engine is no longer healthy: health NOT_SERVING, shutting down")
    await runner.set_serving(False)
    runner.request_stop()
    return True


async def serve_engine(
    engine: Engine,
    runner: GrpcServiceRunner,
    *,
    registration: Registration | None = None,
    poll_seconds: float = ENGINE_HEALTH_POLL_SECONDS,
) -> int:
    """Serve `engine` (already added to `runner`) until SIGTERM or its death.

    Returns the process exit status: 0 after a requested stop, 1 when the engine
    failed to start, died while serving, or the control plane could not be reached.
    """
    watchdog: asyncio.Future[bool] | None = None

    async def start() -> None:
        nonlocal watchdog
        await engine.start()
        watchdog = asyncio.ensure_future(_watch_engine(engine, runner, poll_seconds))

    try:
        await serve(runner, load=start, shutdown=engine.shutdown, registration=registration)
    except RegistrationError as error:
        logger.error("%s", error)
        return 1
    except Exception:  # noqa: BLE001 - a failed start is fatal: say why, exit non-zero
        logger.exception("the engine failed")
        return 1
    finally:
        if watchdog is not None and not watchdog.done():
            watchdog.cancel()
    if watchdog is not None and watchdog.done() and not watchdog.cancelled() and watchdog.result():
        logger.error("exiting with status 1: the engine died")
        return 1
    return 0
