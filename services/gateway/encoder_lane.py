"""The encoder routes as pure ASGI, ahead of FastAPI's router.

`POST {prefix}/v1/embeddings`, `{prefix}/v1/rerank`, `/v1/models/{name}:predict` and
`/v2/models/{name}/infer` carry the gateway's encoder traffic, whose engines answer a small
model in a few milliseconds, so what the gateway spends per request is a large share of the
whole. FastAPI's way to a route (matching the path against every route, the request wrapper
with its two exit stacks and exception wrapping, dependency solving, reading the body as JSON
and validating the Python objects, Starlette's exception middleware) is most of that
(docs/performance.md). `EncoderLane` skips it for these four routes.

Contract: the same answers, byte for byte, as the FastAPI routes, which stay (they serve the
OpenAPI document and every request the lane hands on):
- the lane calls the functions the routes call (`answer_*` in openai/router.py and
  kserve/router.py), and turns their errors into answers with the functions the app's
  exception handlers use (errors.py);
- an OpenAI body is validated here in one pass over its bytes (`model_validate_json`), and
  only when its Content-Type is `application/json`; a body of any other type, and one that
  does not validate, goes to the FastAPI app as it came, whose route answers it as before
  (FastAPI's reading of content types, 400 naming the problem);
- anything else (other methods and paths, websockets, lifespan) passes through untouched.

It is the innermost of the gateway's middleware: request ids, metrics, tracing, tenants and
the body limits see every request first. An unexpected exception propagates to the app's 500
handler as from a route.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import TypeVar

from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import get_route_path
from starlette.types import ASGIApp, Receive, Scope, Send

from services.common.errors import HfmeshError
from services.gateway.errors import hfmesh_error_response, is_openai, validation_error_response
from services.gateway.kserve.router import answer_infer, answer_predict
from services.gateway.middleware import replaying
from services.gateway.openai.protocol import EmbeddingRequest, RerankRequest
from services.gateway.openai.router import answer_embeddings, answer_rerank

M = TypeVar("M", bound=BaseModel)
#: The paths of the KServe routes, as Starlette compiles `{name}` (one path segment).
NAMED_ROUTES: tuple[tuple[re.Pattern[str], Callable[[str, Request], Awaitable[Response]]], ...] = (
    (re.compile(r"^/v1/models/(?P<name>[^/]+):predict$"), answer_predict),
    (re.compile(r"^/v2/models/(?P<name>[^/]+)/infer$"), answer_infer),
)


class EncoderLane:
    def __init__(self, app: ASGIApp, *, openai_prefix: str, retry_after: int) -> None:
        self.app = app
        self.openai_prefix = openai_prefix
        self.retry_after = retry_after
        self.openai_routes: dict[str, tuple[type[BaseModel], Callable]] = {
            f"{openai_prefix}/v1/embeddings": (EmbeddingRequest, answer_embeddings),
            f"{openai_prefix}/v1/rerank": (RerankRequest, answer_rerank),
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        path = get_route_path(scope)
        openai = self.openai_routes.get(path)
        if openai is not None:
            model, answer = openai
            request = Request(scope, receive)
            body = await request.body()
            parsed = json_body(request, body, model)
            if parsed is None:  # FastAPI's route reads it and answers as it always has
                await self.app(scope, replaying(body, receive), send)
                return
            await self._answer(request, answer(parsed, request), send)
            return
        for pattern, named in NAMED_ROUTES:
            match = pattern.match(path)
            if match is not None:
                name, request = match["name"], Request(scope, receive)
                await self._answer(request, named(name, request), send)
                return
        await self.app(scope, receive, send)

    async def _answer(self, request: Request, work: Awaitable[Response], send: Send) -> None:
        """`work`'s answer, or the app's exception handlers' answer to its error."""
        try:
            response = await work
        except HfmeshError as error:
            openai = is_openai(request.scope, self.openai_prefix)
            response = hfmesh_error_response(
                error, request, openai=openai, retry_after=self.retry_after
            )
        except RequestValidationError as error:
            response = validation_error_response(
                error, openai=is_openai(request.scope, self.openai_prefix)
            )
        await response(request.scope, request.receive, send)


def json_body(request: Request, body: bytes, model: type[M]) -> M | None:
    """The body as `model` when it is declared `application/json` and validates; else None."""
    content_type = request.headers.get("content-type")
    if content_type is None or content_type.split(";", 1)[0].strip().lower() != "application/json":
        return None
    try:
        return model.model_validate_json(body)
    except ValidationError:
        return None
