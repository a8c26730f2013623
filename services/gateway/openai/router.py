"""OpenAI routes: `{prefix}/v1/completions`, `/chat/completions`, `/embeddings`, `/rerank`,
`/models`."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from services.gateway.errors import OPENAI_TAG, json_response
from services.gateway.openai.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    RerankRequest,
)
from services.gateway.state import gateway
from services.gateway.streaming import EventStreamResponse, cancel_on_disconnect


def _answer(result) -> Response:
    if hasattr(result, "model_dump_json"):
        return json_response(result)
    return EventStreamResponse(result)


def build_router(prefix: str) -> APIRouter:
    router = APIRouter(prefix=prefix, tags=[OPENAI_TAG])

    @router.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Response:
        state = gateway(request)
        call = state.call(request)
        return _answer(
            await cancel_on_disconnect(request, state.generation.completions(body, call))
        )

    @router.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        state = gateway(request)
        call = state.call(request)
        return _answer(await cancel_on_disconnect(request, state.generation.chat(body, call)))

    @router.post("/v1/embeddings")
    async def embeddings(body: EmbeddingRequest, request: Request) -> Response:
        state = gateway(request)
        return json_response(
            await cancel_on_disconnect(request, state.pooling.embeddings(body, state.call(request)))
        )

    @router.post("/v1/rerank")
    async def rerank(body: RerankRequest, request: Request) -> Response:
        state = gateway(request)
        return json_response(
            await cancel_on_disconnect(request, state.pooling.rerank(body, state.call(request)))
        )

    @router.get("/v1/models")
    async def models(request: Request) -> Response:
        return json_response(gateway(request).pooling.models())

    return router
