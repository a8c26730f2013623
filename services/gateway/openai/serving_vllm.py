"""`/tokenize`, `/detokenize`, `/score` and `/classify` as `vllm serve` answers them, done by
the services that own the work: the tokenizer service tokenizes, renders chats, detokenizes and
names classes; engines run the encoders (through the same split path as embeddings and rerank).

- `/tokenize` renders a chat exactly as `/v1/chat/completions` does (same template inputs), so
  its `count` is the chat request's `usage.prompt_tokens`.
- `/detokenize` keeps special tokens, so a chat prompt's ids give back the rendered prompt.
- `/score`: on a cross-encoder (`rerank` task) each pair is encoded together and scored with
  the sigmoid of its logit (vLLM's activation for one label); on an embedding model the score
  is the cosine of the two texts' embeddings.
- `/classify` (sequence classification): `probs` are the softmax of the logits (the sigmoid for
  a one-label head), `label` the config's name of the top class.
"""

from __future__ import annotations

import numpy as np

from services.common import task_results
from services.common.engine import Task
from services.common.errors import InvalidArgument
from services.gateway.core import MeshClient, check_task
from services.gateway.grpc_clients import CallContext
from services.gateway.openai.messages import hf_messages
from services.gateway.openai.vllm_protocol import (
    ClassificationData,
    ClassificationRequest,
    ClassificationResponse,
    DetokenizeRequest,
    DetokenizeResponse,
    ScoreData,
    ScoreRequest,
    ScoreResponse,
    TokenizeRequest,
    TokenizeResponse,
    UsageInfo,
)
from services.gateway.routing import ModelRoute


class VllmExtrasServing:
    def __init__(self, mesh: MeshClient) -> None:
        self.mesh = mesh

    def _route(self, model: str | None, call: CallContext) -> ModelRoute:
        """The named model, or the only one served (to the caller) when `model` is left out
        (as vLLM)."""
        if model is not None:
            return self.mesh.route(model, call)
        served = [n for n in self.mesh.names(call) if n in self.mesh.routes.by_name]
        if len(served) != 1:
            raise InvalidArgument(
                f"'model' is required: this server serves {len(served)} models "
                f"({', '.join(served)})"
            )
        return self.mesh.route(served[0], call)

    async def tokenize(self, request: TokenizeRequest, call: CallContext) -> TokenizeResponse:
        route = self._route(request.model, call)
        if request.messages is not None:
            rendered = await self.mesh.render_chat(
                route,
                call,
                messages=hf_messages(request.messages),
                tools=request.tools,
                tool_parser=route.entry.tool_parser,
                chat_template=request.chat_template,
                chat_template_kwargs=request.chat_template_kwargs,
                add_generation_prompt=request.add_generation_prompt
                and not request.continue_final_message,
                continue_final_message=request.continue_final_message,
                add_special_tokens=request.add_special_tokens,
            )
        else:
            assert request.prompt is not None, "the request validator wants one input"
            special = True if request.add_special_tokens is None else request.add_special_tokens
            rendered = await self.mesh.tokenize(
                route, call, request.prompt, add_special_tokens=special
            )
        strings = None
        if request.return_token_strs:
            strings = await self.mesh.token_strings(
                route, call, rendered.input_ids, vocabulary=True
            )
        return TokenizeResponse(
            count=len(rendered.input_ids),
            max_model_len=self.mesh.max_model_len(route, rendered) or 0,
            tokens=rendered.input_ids,
            token_strs=strings,
        )

    async def detokenize(self, request: DetokenizeRequest, call: CallContext) -> DetokenizeResponse:
        route = self._route(request.model, call)
        if not request.tokens:
            return DetokenizeResponse(prompt="")
        text = await self.mesh.detokenize(
            route, call, list(request.tokens), skip_special_tokens=False
        )
        return DetokenizeResponse(prompt=text)

    async def score(self, request: ScoreRequest, call: CallContext) -> ScoreResponse:
        route = self._route(request.model, call)
        check_task(route, (Task.RERANK, Task.TEXT_EMBEDDING), "/score")
        first, second = request.sides()
        if not second:
            raise InvalidArgument("the second side of the score request holds no text")
        if len(first) == 1:
            first = first * len(second)
        elif len(first) != len(second):
            raise InvalidArgument(
                f"the first side holds {len(first)} texts and the second {len(second)}; the "
                "first must hold one text or as many as the second"
            )
        if any(not text for text in first + second):
            raise InvalidArgument("a text to score is empty")
        if route.task is Task.RERANK:
            encoded = await self.mesh.encode(route, call, texts=first, pairs=second)
            scores = task_results.sigmoid(np.asarray(encoded.output, dtype=np.float64).ravel())
            tokens = encoded.num_tokens
        else:
            left = await self.mesh.encode(route, call, texts=first)
            right = await self.mesh.encode(route, call, texts=second)
            a = np.asarray(left.output, dtype=np.float64)
            b = np.asarray(right.output, dtype=np.float64)
            scores = (a * b).sum(axis=1) / (
                np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12
            )
            tokens = left.num_tokens + right.num_tokens
        return ScoreResponse(
            model=route.name,
            data=[ScoreData(index=i, score=float(s)) for i, s in enumerate(scores)],
            usage=UsageInfo(prompt_tokens=tokens, total_tokens=tokens),
        )

    async def classify(
        self, request: ClassificationRequest, call: CallContext
    ) -> ClassificationResponse:
        route = self._route(request.model, call)
        check_task(route, (Task.SEQUENCE_CLASSIFICATION,), "/classify")
        texts = [request.input] if isinstance(request.input, str) else list(request.input)
        if not texts or any(not text for text in texts):
            raise InvalidArgument("'input' is empty or holds an empty string")
        encoded = await self.mesh.encode(
            route, call, texts=texts, parameters={"return_raw_logits": True}, label=True
        )
        logits = np.asarray(encoded.output, dtype=np.float64).reshape(len(texts), -1)
        probs = (
            task_results.sigmoid(logits)
            if logits.shape[1] == 1
            else task_results.softmax(logits, axis=-1)
        )
        labels = encoded.labels
        assert labels is not None, "encode(label=True) answers with the class names"
        data = [
            ClassificationData(index=i, label=labels[i], probs=row.tolist(), num_classes=len(row))
            for i, row in enumerate(probs)
        ]
        usage = UsageInfo(prompt_tokens=encoded.num_tokens, total_tokens=encoded.num_tokens)
        return ClassificationResponse(model=route.name, data=data, usage=usage)
