"""KServe V1 (`/v1/models`, `:predict`) and OIP V2 REST (`/v2/...`) routes, plus `/metrics`."""

from __future__ import annotations

import json
from typing import TypeVar

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.responses import Response

from services.common.errors import InvalidArgument
from services.common.version import VERSION
from services.gateway.errors import KServeError, error_responses, json_response
from services.gateway.kserve.binary import HEADER_LENGTH, encode_response, raw_outputs, split_body
from services.gateway.kserve.protocol import V1PredictRequest, V2InferRequest, response_to_json
from services.gateway.state import gateway
from services.gateway.streaming import cancel_on_disconnect

SERVER_NAME = "hfmesh-gateway"


M = TypeVar("M", bound=BaseModel)


def _json(payload: object, status: int = 200) -> Response:
    return Response(json.dumps(payload), status_code=status, media_type="application/json")


async def _body(request: Request, model: type[M]) -> M:
    """The JSON body whatever its Content-Type (`curl -d @file` sends a form type), as KServe
    reads it."""
    return _parse(await request.body(), model)


def _parse(raw: bytes, model: type[M]) -> M:
    try:
        data = json.loads(raw or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InvalidArgument(f"the request body is not valid JSON ({error})") from None
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise RequestValidationError(error.errors()) from None


# The encoder routes' work, shared with their pure ASGI lane (services/gateway/encoder_lane.py).


async def answer_predict(name: str, request: Request) -> Response:
    """KServe V1 `:predict`."""
    body = await _body(request, V1PredictRequest)
    state = gateway(request)
    call = state.call(request)
    slots = len(body.instances) if state.kserve.generative(name) else 1
    work = state.admission.run(name, slots, call, lambda: state.kserve.v1_predict(name, body, call))
    return json_response(await cancel_on_disconnect(request, work))


async def answer_infer(name: str, request: Request) -> Response:
    """V2 REST infer, with the binary tensor extension both ways."""
    header, tail = split_body(await request.body(), request.headers.get(HEADER_LENGTH))
    body = _parse(header, V2InferRequest)
    raw = raw_outputs(body)
    state = gateway(request)
    call = state.call(request)
    work = state.admission.run(name, 1, call, lambda: state.kserve.v2_infer(name, body, tail, call))
    result = await cancel_on_disconnect(request, work)
    content, json_length = encode_response(response_to_json(result), result, raw)
    if json_length is None:
        return Response(content, media_type="application/json")
    return Response(
        content, media_type="application/octet-stream", headers={HEADER_LENGTH: str(json_length)}
    )


def build_v1_router() -> APIRouter:
    router = APIRouter(tags=["kserve-v1"], responses=error_responses(KServeError))

    @router.get("/")
    async def alive() -> Response:
        """KServe's V1 liveness answer (the `kserve` SDK's `is_server_live` reads it)."""
        return _json({"status": "alive"})

    @router.get("/v1/models")
    async def list_models(request: Request) -> Response:
        state = gateway(request)
        return _json({"models": state.kserve.model_names(state.call(request))})

    @router.get("/v1/models/{name}")
    async def model_status(name: str, request: Request) -> Response:
        state = gateway(request)
        state.check_visible(request, name)
        return _json({"name": name, "ready": state.kserve.ready(name)})

    @router.post("/v1/models/{name}:predict")
    async def predict(name: str, request: Request) -> Response:
        return await answer_predict(name, request)

    return router


def build_v2_router() -> APIRouter:
    router = APIRouter(tags=["kserve-v2"], responses=error_responses(KServeError))

    @router.get("/v2")
    async def server_metadata() -> Response:
        return _json(
            {"name": SERVER_NAME, "version": VERSION, "extensions": ["binary_tensor_data"]}
        )

    @router.get("/v2/health/live")
    async def live() -> Response:
        return _json({"live": True})

    @router.get("/v2/health/ready")
    async def ready(request: Request) -> Response:
        state = gateway(request)
        is_ready = state.routes.ready and not state.draining
        return _json({"ready": is_ready}, 200 if is_ready else 503)

    @router.get("/v2/models/{name}")
    async def model_metadata(name: str, request: Request) -> Response:
        state = gateway(request)
        return _json(await state.kserve.v2_metadata(name, state.call(request)))

    @router.get("/v2/models/{name}/ready")
    async def model_ready(name: str, request: Request) -> Response:
        state = gateway(request)
        state.check_visible(request, name)
        is_ready = state.kserve.ready(name)
        return _json({"name": name, "ready": is_ready}, 200 if is_ready else 503)

    @router.post("/v2/models/{name}/infer")
    async def infer(name: str, request: Request) -> Response:
        return await answer_infer(name, request)

    @router.get(
        "/metrics",
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
    )
    async def metrics(request: Request) -> Response:
        return Response(gateway(request).metrics.render(), media_type="text/plain; version=0.0.4")

    return router
