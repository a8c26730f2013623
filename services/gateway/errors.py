"""Errors → HTTP answers: the DESIGN.md §3 table, in the OpenAI error envelope on
OpenAI routes and `{"error": ...}` on KServe V1/V2 routes. Validation errors
are 400, never FastAPI's 422."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from services.common.errors import GENERIC_INTERNAL_MESSAGE, HfmeshError
from services.common.logs import request_id_var

logger = logging.getLogger(__name__)

OPENAI_TAG = "openai"
OPENAI_PATHS = (
    "/v1/completions",
    "/v1/chat/completions",
    "/v1/embeddings",
    "/v1/rerank",
    "/v1/models",
)

_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    499: "client_closed_request",
    503: "service_unavailable_error",
    504: "timeout_error",
}


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: int


class OpenAIError(BaseModel):
    """The OpenAI error envelope (OpenAI routes)."""

    error: OpenAIErrorDetail


class KServeError(BaseModel):
    """KServe's error body (V1/V2 routes)."""

    error: str


_DOCUMENTED = {
    400: "invalid request: body, parameter, tensor, or a limit (docs/protocol.md §4)",
    401: "missing or wrong API key",
    404: "unknown model",
    413: "request body, or a message between services, over its size limit",
    429: "the tenant is over its request or token budget (Retry-After, x-ratelimit-* headers)",
    431: "request headers over their size limit",
    503: "model not ready, or over capacity (Retry-After)",
    504: "the request's deadline passed",
}


def error_responses(model: type[BaseModel]) -> dict[int | str, dict[str, Any]]:
    """The error answers a route family may give, for its OpenAPI document."""
    return {status: {"model": model, "description": text} for status, text in _DOCUMENTED.items()}


def is_openai(scope: Mapping[str, Any], openai_prefix: str) -> bool:
    """OpenAI routes get the OpenAI envelope. With an empty prefix, `/v1/models` is OpenAI's."""
    route = scope.get("route")
    if route is not None and OPENAI_TAG in (getattr(route, "tags", None) or []):
        return True
    path = scope.get("path", "")
    if openai_prefix:
        return path.startswith(openai_prefix + "/")
    return path in OPENAI_PATHS


def error_body(
    status: int, message: str, *, openai: bool, param: str | None = None
) -> dict[str, Any]:
    if openai:
        kind = _OPENAI_TYPES.get(
            status, "server_error" if status >= 500 else "invalid_request_error"
        )
        return {"error": {"message": message, "type": kind, "param": param, "code": status}}
    return {"error": message}


def error_response(
    status: int,
    message: str,
    *,
    openai: bool,
    retry_after: float | None = None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    all_headers = dict(headers or {})
    if retry_after is not None and status in (429, 503):
        all_headers["Retry-After"] = str(int(max(1, retry_after)))
    body = json.dumps(error_body(status, message, openai=openai, param=param)).encode()
    return Response(body, status_code=status, media_type="application/json", headers=all_headers)


def public_message(error: HfmeshError) -> str:
    """What a client may read of an error: 5xx other than 503/504 only say "internal"."""
    status = error.http_status
    return error.message if status < 500 or status in (503, 504) else GENERIC_INTERNAL_MESSAGE


def stream_error_event(error: BaseException) -> bytes:
    """The closing SSE write of a stream that failed after its 200 was sent: an OpenAI
    error event (`data: {"error": {...}}`, as vLLM sends) and `data: [DONE]`, so a client
    sees an explicit failure rather than a truncated stream."""
    if isinstance(error, HfmeshError):
        status, message = error.http_status, public_message(error)
        logger.warning("stream ended with %d: %s", status, error.message)
    else:
        status, message = 500, GENERIC_INTERNAL_MESSAGE
        logger.error("stream failed [%s]", request_id_var.get(), exc_info=error)
    body = json.dumps(error_body(status, message, openai=True), separators=(",", ":"))
    return b"data: " + body.encode() + b"\n\ndata: [DONE]\n\n"


def validation_message(error: RequestValidationError) -> tuple[str, str | None]:
    problems, first = [], None
    for item in error.errors():
        loc = [str(p) for p in item.get("loc", ()) if p != "body"]
        where = ".".join(loc) or "body"
        first = first or where
        problems.append(f"{where}: {item.get('msg', 'invalid')}")
    return "; ".join(problems) or "invalid request", first


def validation_error_response(error: RequestValidationError, *, openai: bool) -> Response:
    """A body that failed validation: 400 naming each problem."""
    message, param = validation_message(error)
    return error_response(400, message, openai=openai, param=param)


def hfmesh_error_response(
    error: HfmeshError, request: Request, *, openai: bool, retry_after: int
) -> Response:
    """The DESIGN.md §3 answer to an `HfmeshError`; 429/503 carry `Retry-After` (the error's
    own, else `retry_after`)."""
    status = error.http_status
    message = public_message(error)
    if status >= 500:
        logger.warning("%s %s → %d: %s", request.method, request.url.path, status, error.message)
    retry = (
        error.retry_after
        if error.retry_after is not None
        else (retry_after if status in (429, 503) else None)
    )
    return error_response(status, message, openai=openai, retry_after=retry, param=error.param)


def install_error_handlers(app: FastAPI, *, openai_prefix: str, retry_after: int) -> None:
    def openai(request: Request) -> bool:
        return is_openai(request.scope, openai_prefix)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, error: RequestValidationError) -> Response:
        return validation_error_response(error, openai=openai(request))

    @app.exception_handler(HfmeshError)
    async def _hfmesh(request: Request, error: HfmeshError) -> Response:
        return hfmesh_error_response(
            error, request, openai=openai(request), retry_after=retry_after
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, error: StarletteHTTPException) -> Response:
        return error_response(
            error.status_code,
            str(error.detail),
            openai=openai(request),
            headers=dict(error.headers or {}),
        )

    @app.exception_handler(Exception)
    async def _bug(request: Request, error: Exception) -> Response:
        logger.error(
            "unhandled error on %s %s [%s]",
            request.method,
            request.url.path,
            request_id_var.get(),
            exc_info=error,
        )
        return error_response(500, GENERIC_INTERNAL_MESSAGE, openai=openai(request))


def json_response(model: Any) -> Response:
    """A pydantic model as JSON (None fields kept, as the OpenAI API answers)."""
    return Response(model.model_dump_json(), media_type="application/json")
