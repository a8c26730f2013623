"""The gateway's request span (`services.common.tracing` holds the setup and propagation).

`TracingMiddleware` (pure ASGI, installed only when tracing is on) opens one SERVER span per
HTTP request, the child of the request's `traceparent` when it has one, and current for the whole
request, so every gRPC hop carries it on. Health and `/metrics` get no span, and the ASGI
send/receive events none either. The request id is the `hfmesh.request_id` attribute.

The inference routes name and attribute the span per the OpenTelemetry GenAI conventions
(`services.gateway.genai`).

Status: an answer of 400 or more is an error (`error.type` = the status code; a rejected request
is one); a client that went away, before the response started or in the middle of a stream, is
an error with `error.type` = `cancelled`.
"""

from __future__ import annotations

from opentelemetry.trace import SpanKind, Status, StatusCode
from starlette.types import ASGIApp, Receive, Scope, Send

from services.common import tracing
from services.gateway.middleware import ResponseWatch

UNTRACED_PATHS = frozenset(("/metrics", "/v2/health/live", "/v2/health/ready", "/health"))
_PROPAGATED = (b"traceparent", b"tracestate")


class TracingMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path in UNTRACED_PATHS or not tracing.enabled():
            await self.app(scope, receive, send)
            return
        headers = {
            key.decode("latin-1"): value.decode("latin-1")
            for key, value in scope.get("headers", ())
            if key in _PROPAGATED
        }
        method = scope.get("method", "")
        attributes = {"http.request.method": method, "url.path": path}
        request_id = scope.get("state", {}).get("request_id")
        if request_id:
            attributes[tracing.REQUEST_ID_ATTRIBUTE] = request_id
        response = ResponseWatch(send)
        with tracing.span(
            f"{method} {path}", attributes, kind=SpanKind.SERVER, parent=tracing.extract(headers)
        ) as span:
            assert span is not None
            await self.app(scope, receive, response.send)
            code = response.status
            if code is not None:
                span.set_attribute("http.response.status_code", code)
            if code is None or code == 499 or not response.complete:
                span.set_attribute("error.type", "cancelled")
                span.set_status(Status(StatusCode.ERROR, "the client went away"))
            elif code >= 400:
                span.set_attribute("error.type", str(code))
                span.set_status(Status(StatusCode.ERROR, f"HTTP {code}"))
