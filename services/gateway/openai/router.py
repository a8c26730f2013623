"""OpenAI routes: `{prefix}/v1/completions`, `/chat/completions`, `/embeddings`, `/rerank`,
`/models`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from services.gateway.admission import generation_slots
from services.gateway.errors import OPENAI_TAG, OpenAIError, error_responses, json_response
from services.gateway.openai.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    RerankRequest,
)
from services.gateway.state import gateway
from services.gateway.streaming import EventStreamResponse, cancel_on_disconnect

#: With `"stream": true` the answer is Server-Sent Events.
STREAMED: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}}
}


def _answer(result) -> Response:
    if hasattr(result, "model_dump_json"):
        return json_response(result)
    return EventStreamResponse(result)


# The encoder routes' work, shared with their pure ASGI lane (services/gateway/encoder_lane.py).


async def answer_embeddings(body: EmbeddingRequest, request: Request) -> Response:
    state = gateway(request)
    call = state.call(request)
    work = state.admission.run(body.model, 1, call, lambda: state.pooling.embeddings(body, call))
    return json_response(await cancel_on_disconnect(request, work))


async def answer_rerank(body: RerankRequest, request: Request) -> Response:
    state = gateway(request)
    call = state.call(request)
    work = state.admission.run(body.model, 1, call, lambda: state.pooling.rerank(body, call))
    return json_response(await cancel_on_disconnect(request, work))


def build_router(prefix: str) -> APIRouter:
    router = APIRouter(prefix=prefix, tags=[OPENAI_TAG], responses=error_responses(OpenAIError))

    @router.post("/v1/completions", responses=STREAMED)
    async def completions(body: CompletionRequest, request: Request) -> Response:
        state = gateway(request)
        call = state.call(request)
        slots = generation_slots(body.n, body.best_of, body.prompt)
        work = state.admission.run(
            body.model, slots, call, lambda: state.generation.completions(body, call)
        )
        return _answer(await cancel_on_disconnect(request, work))

    @router.post("/v1/chat/completions", responses=STREAMED)
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        state = gateway(request)
        call = state.call(request)
        work = state.admission.run(
            body.model, body.n, call, lambda: state.generation.chat(body, call)
        )
        return _answer(await cancel_on_disconnect(request, work))

    @router.post("/v1/embeddings")
    async def embeddings(body: EmbeddingRequest, request: Request) -> Response:
        return await answer_embeddings(body, request)

    @router.post("/v1/rerank")
    async def rerank(body: RerankRequest, request: Request) -> Response:
        return await answer_rerank(body, request)

    @router.get("/v1/models")
    async def models(request: Request) -> Response:
        state = gateway(request)
        return json_response(state.pooling.models(state.call(request)))

    return router
