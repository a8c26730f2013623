"""OpenAI embeddings, rerank (the Jina/Cohere shape vLLM serves) and the model list."""

from __future__ import annotations

import base64

import numpy as np

from services.common import task_results
from services.common.engine import Task
from services.common.errors import InvalidArgument
from services.gateway.core import MeshClient, check_task
from services.gateway.genai import genai_request, genai_response
from services.gateway.grpc_clients import CallContext
from services.gateway.openai.protocol import (
    EmbeddingData,
    EmbeddingRequest,
    EmbeddingResponse,
    ModelCard,
    ModelList,
    RerankDocument,
    RerankRequest,
    RerankResponse,
    RerankResult,
    RerankUsage,
    Usage,
    new_id,
)


class PoolingServing:
    def __init__(self, mesh: MeshClient, *, owned_by: str, created: int) -> None:
        self.mesh = mesh
        self.owned_by = owned_by
        self.created = created

    def models(self, call: CallContext) -> ModelList:
        """The models the caller may use."""
        visible = set(self.mesh.names(call))
        cards = [
            ModelCard(
                id=name,
                created=self.created,
                owned_by=self.owned_by,
                max_model_len=route.entry.max_model_len,
                task=route.task.value,
                root=route.entry.source or None,
            )
            for name, route in self.mesh.routes.by_name.items()
            if name in visible
        ]
        cards += [
            ModelCard(
                id=adapter.name,
                created=self.created,
                owned_by=self.owned_by,
                max_model_len=route.entry.max_model_len,
                task=route.task.value,
                root=adapter.source,
                parent=name,
            )
            for name, route in self.mesh.routes.by_name.items()
            for adapter in route.entry.adapters
            if adapter.name in visible
        ]
        for public, split in self.mesh.routes.splits.items():
            if public not in visible:
                continue
            entry = self.mesh.routes.by_name[next(iter(split.weights))].entry
            cards.append(
                ModelCard(
                    id=public,
                    created=self.created,
                    owned_by=self.owned_by,
                    max_model_len=entry.max_model_len,
                    task=entry.task.value,
                )
            )
        return ModelList(data=cards)

    async def embeddings(self, request: EmbeddingRequest, call: CallContext) -> EmbeddingResponse:
        genai_request("embeddings", request.model)
        route = self.mesh.route(request.model, call)
        check_task(route, (Task.TEXT_EMBEDDING,), "/v1/embeddings")
        if request.dimensions is not None:
            raise InvalidArgument(
                f"'dimensions' is not supported by model '{request.model}' (it is not a matryoshka "
                "model)"
            )
        texts, ids = _inputs(request.input)
        encoded = await self.mesh.encode(route, call, texts=texts, token_ids=ids)
        vectors = np.asarray(encoded.output, dtype=np.float32)
        data = []
        for index, vector in enumerate(vectors):
            if request.encoding_format == "base64":
                value: list[float] | str = base64.b64encode(vector.astype("<f4").tobytes()).decode(
                    "ascii"
                )
            else:
                value = vector.tolist()
            data.append(EmbeddingData(index=index, embedding=value))
        usage = Usage(prompt_tokens=encoded.num_tokens, total_tokens=encoded.num_tokens)
        genai_response(encoded.num_tokens)
        return EmbeddingResponse(data=data, model=request.model, usage=usage)

    async def rerank(self, request: RerankRequest, call: CallContext) -> RerankResponse:
        route = self.mesh.route(request.model, call)
        check_task(route, (Task.RERANK,), "/v1/rerank")
        documents = [d.text if isinstance(d, RerankDocument) else d for d in request.documents]
        if not request.query:
            raise InvalidArgument("'query' is empty")
        encoded = await self.mesh.encode(
            route, call, texts=[request.query] * len(documents), pairs=documents
        )
        # The cross-encoder's raw logit → a 0..1 relevance score, as vLLM and Cohere report it.
        scores = task_results.sigmoid(np.asarray(encoded.output, dtype=np.float64).ravel())
        order = sorted(range(len(documents)), key=lambda i: -scores[i])
        if request.top_n:
            order = order[: request.top_n]
        results = [
            RerankResult(
                index=i,
                document=RerankDocument(text=documents[i]) if request.return_documents else None,
                relevance_score=float(scores[i]),
            )
            for i in order
        ]
        return RerankResponse(
            id=new_id("rerank"),
            model=request.model,
            usage=RerankUsage(total_tokens=encoded.num_tokens),
            results=results,
        )


def _inputs(value: str | list) -> tuple[list[str] | None, list[list[int]] | None]:
    if isinstance(value, str):
        value = [value]
    if not value:
        raise InvalidArgument("'input' is empty")
    if all(isinstance(v, int) for v in value):
        return None, [list(value)]
    if all(isinstance(v, str) for v in value):
        if any(not v for v in value):
            raise InvalidArgument("'input' holds an empty string")
        return list(value), None
    if all(isinstance(v, list) for v in value):
        return None, [list(v) for v in value]
    raise InvalidArgument("'input' must be a string, a list of strings, or token id lists")
