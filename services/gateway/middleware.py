"""Pure ASGI middleware (Starlette's base-class middleware would hide client disconnects).

- `RequestIdMiddleware`: accepts or generates `X-Request-Id`, binds it for
  logging and the gRPC hops, echoes it on the response.
- `AccessMiddleware`: request counts, outcomes and in-flight gauge, the time to each
  answer's status (a refusal's whole cost inside the gateway), the GenAI metrics of
  inference requests; 499 logged for clients that went away.
- `RequestGuardMiddleware`: headers over their limit → 431, bodies over theirs → 413
  (by Content-Length up front, or while reading a chunked body), a body that is not
  UTF-8 or nests too deep → 400, on every route family.
- `TenantMiddleware`: `Authorization: Bearer <key>` on every route except
  health and metrics, naming the request's tenant (services/gateway/tenants.py); the
  tenant's budget headers on every answer (services/gateway/quota.py).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.common.errors import Cancelled, HfmeshError, InvalidArgument, PayloadTooLarge
from services.common.logs import REQUEST_ID_HEADER, new_request_id, request_id_var
from services.gateway import genai
from services.gateway.errors import error_response, is_openai
from services.gateway.kserve.binary import HEADER_LENGTH, split_body
from services.gateway.limits import check_json_body
from services.gateway.metrics import GatewayMetrics, outcome_of
from services.gateway.quota import Budgets, Quota
from services.gateway.tenants import TenantDirectory

logger = logging.getLogger(__name__)

_VALID_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
OPEN_PATHS = ("/metrics", "/v2/health/live", "/v2/health/ready", "/health")
#: V2 REST's binary tensor extension: the body's JSON part is this many leading bytes.
BINARY_HEADER_LENGTH = HEADER_LENGTH.lower().encode()


class HeadersTooLarge(InvalidArgument):
    """Request headers over the limit."""

    http_status = 431


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


def replaying(body: bytes, receive: Receive) -> Receive:
    """A `receive` that answers the body already read, then what the client sends next."""
    delivered = False

    async def replay() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = _header(scope, REQUEST_ID_HEADER.encode())
        request_id = given if given and _VALID_ID.match(given) else new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        token = request_id_var.set(request_id)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id_var.reset(token)


class ResponseWatch:
    """Wraps `send`: the response's status and when it started, and whether its body was
    finished (a streamed body cut short by a client that went away is not)."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self.status: int | None = None
        self.started_at: float | None = None
        self.complete = False

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.started_at = time.monotonic()
        elif message["type"] == "http.response.body" and not message.get("more_body"):
            self.complete = True
        await self._send(message)


def _family(path: str, openai_prefix: str) -> str:
    if is_openai({"path": path}, openai_prefix):
        return "openai"
    if path.startswith("/v2"):
        return "v2"
    if path.startswith("/v1"):
        return "v1"
    return "other"


class AccessMiddleware:
    def __init__(self, app: ASGIApp, *, metrics: GatewayMetrics, openai_prefix: str) -> None:
        self.app = app
        self.metrics = metrics
        self.openai_prefix = openai_prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        response = ResponseWatch(send)
        started = time.monotonic()

        family = _family(scope.get("path", ""), self.openai_prefix)
        self.metrics.in_flight.inc()
        # Probes and scrapes are no route family's requests (a scrape would see itself in flight).
        counted = scope.get("path") not in OPEN_PATHS
        if counted:
            self.metrics.received.labels(family).inc()
        genai_record, genai_token = genai.begin()
        try:
            await self.app(scope, receive, response.send)
        finally:
            genai.end(genai_token)
            self.metrics.in_flight.dec()
            code = response.status or 499
            self.metrics.requests.labels(family, str(code)).inc()
            outcome = outcome_of(code, response.complete)
            if counted:
                self.metrics.outcomes.labels(family, outcome).inc()
                if response.started_at is not None:
                    self.metrics.response_start.labels(family, str(code)).observe(
                        response.started_at - started
                    )
            error_type = {"success": "", "cancelled": "cancelled"}.get(outcome, str(code))
            self.metrics.observe_genai(genai_record, error_type)
            if code == 499:
                logger.info(
                    "%s %s → 499 client closed the request after %.3fs",
                    scope.get("method"),
                    scope.get("path"),
                    time.monotonic() - started,
                )


class RequestGuardMiddleware:
    """The limits a request meets before any route sees it: header size (431), body size
    (413, by Content-Length before reading, else while reading), and a body a JSON parser
    may be given (`limits.check_json_body`: UTF-8, nesting depth; 400). The body is read
    here once and handed on; later `receive()` calls (disconnect watches) reach the client.
    With V2's binary tensor extension only the JSON header part is checked."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        max_header_bytes: int,
        max_json_depth: int,
        openai_prefix: str,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_header_bytes = max_header_bytes
        self.max_json_depth = max_json_depth
        self.openai_prefix = openai_prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            header_bytes = sum(len(k) + len(v) for k, v in scope.get("headers", ()))
            if header_bytes > self.max_header_bytes:
                raise HeadersTooLarge(
                    f"request headers of {header_bytes} bytes exceed the limit of "
                    f"{self.max_header_bytes} bytes (--max_header_bytes)"
                )
            body = await self._read_body(scope, receive)
        except HfmeshError as error:
            openai = is_openai(scope, self.openai_prefix)
            response = error_response(error.http_status, error.message, openai=openai)
            await response(scope, receive, send)
            return
        if body is None:
            await self.app(scope, receive, send)
            return
        await self.app(scope, replaying(body, receive), send)

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes | None:
        """The whole body of a request that has one (None: none to check), within limits."""
        if scope.get("method") not in ("POST", "PUT", "PATCH"):
            return None
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            raise PayloadTooLarge(
                f"request body of {declared} bytes exceeds the limit of {self.max_body_bytes} "
                "bytes (--max_body_bytes)"
            )
        chunks: list[bytes] = []
        seen = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                raise Cancelled("the client closed the request")
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > self.max_body_bytes:
                raise PayloadTooLarge(
                    f"request body exceeds the limit of {self.max_body_bytes} bytes "
                    "(--max_body_bytes)"
                )
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if body:
            check_json_body(self._json_part(scope, body), max_depth=self.max_json_depth)
        return body

    @staticmethod
    def _json_part(scope: Scope, body: bytes) -> bytes:
        return split_body(body, _header(scope, BINARY_HEADER_LENGTH))[0]


class TenantMiddleware:
    """The API key names the request's tenant (401 without a known key); the tenant's `Quota`
    rides in the scope's state, its rate-limit headers on the answer, and whatever it still
    holds reserved when the request ends goes back to the budget."""

    def __init__(
        self, app: ASGIApp, *, tenants: TenantDirectory, budgets: Budgets, openai_prefix: str
    ) -> None:
        self.app = app
        self.tenants = tenants
        self.budgets = budgets
        self.openai_prefix = openai_prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        tenant = self.tenants.identify(_header(scope, b"authorization"))
        if tenant is None:
            response = error_response(
                401,
                "missing or invalid API key (send 'Authorization: Bearer <key>')",
                openai=is_openai(scope, self.openai_prefix),
                headers={"WWW-Authenticate": "Bearer"},
            )
            await response(scope, receive, send)
            return
        quota = Quota(tenant, self.budgets)
        scope.setdefault("state", {})["quota"] = quota

        async def send_with_limits(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *quota.headers()]
            await send(message)

        try:
            await self.app(scope, receive, send_with_limits)
        finally:
            if quota.reserved:
                # shielded: a cancelled request still gives its reservation back
                await asyncio.shield(asyncio.ensure_future(quota.release()))
