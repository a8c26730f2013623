"""The routes `vllm serve` offers beside OpenAI's, under the same prefix (none when
`KSERVE_OPENAI_ROUTE_PREFIX` is empty, where vLLM has them): `/tokenize`, `/detokenize`,
`/score` and `/v1/score`, `/classify`. OpenAI error envelope, auth and body limits as on the
OpenAI routes."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from services.gateway.errors import OPENAI_TAG, OpenAIError, error_responses, json_response
from services.gateway.openai.vllm_protocol import (
    ClassificationRequest,
    DetokenizeRequest,
    ScoreRequest,
    TokenizeRequest,
)
from services.gateway.state import gateway
from services.gateway.streaming import cancel_on_disconnect


def build_vllm_router(prefix: str) -> APIRouter:
    router = APIRouter(prefix=prefix, tags=[OPENAI_TAG], responses=error_responses(OpenAIError))

    @router.post("/tokenize")
    async def tokenize(body: TokenizeRequest, request: Request) -> Response:
        state = gateway(request)
        return json_response(await state.extras.tokenize(body, state.call(request)))

    @router.post("/detokenize")
    async def detokenize(body: DetokenizeRequest, request: Request) -> Response:
        state = gateway(request)
        return json_response(await state.extras.detokenize(body, state.call(request)))

    @router.post("/score")
    @router.post("/v1/score")
    async def score(body: ScoreRequest, request: Request) -> Response:
        state = gateway(request)
        return json_response(
            await cancel_on_disconnect(request, state.extras.score(body, state.call(request)))
        )

    @router.post("/classify")
    async def classify(body: ClassificationRequest, request: Request) -> Response:
        state = gateway(request)
        return json_response(
            await cancel_on_disconnect(request, state.extras.classify(body, state.call(request)))
        )

    return router
