"""KServe V1 `:predict` and V2 REST inference over the mesh.

Encoder models answer with the KServe HF server's per-task results through the
split path (tokenizer preprocess → engine tensors → tokenizer postprocess).
Generative models: V1 instances are prompts (greedy, `parameters` hold
OpenAI completion fields); V2 requests go to the engine as they are (Triton
vLLM-backend tensors, unary `ModelInfer`). V2 tensor requests (`input_ids` …)
also go to the engine as they are.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import ValidationError

from services.common import llm_tensors
from services.common.codec import InferRequest, InferResponse, Tensor, datatype_of, parse_bool
from services.common.encoder_tensors import RESULT_OPTIONS, RESULT_OUTPUT, encoder_inputs_from
from services.common.engine import Task
from services.common.errors import InvalidArgument
from services.gateway.core import MeshClient
from services.gateway.grpc_clients import CallContext
from services.gateway.kserve.binary import binary_inputs
from services.gateway.kserve.protocol import (
    V1PredictRequest,
    V1PredictResponse,
    V2InferRequest,
    request_from_json,
)
from services.gateway.openai.protocol import CompletionRequest, CompletionResponse
from services.gateway.openai.serving import GenerationServing
from services.gateway.routing import ModelRoute


def _options(parameters: dict[str, Any] | None) -> dict[str, bool]:
    """The result options a request sets (the tokenizer's flags answer for the others)."""
    return {k: parse_bool(k, v) for k, v in (parameters or {}).items() if k in RESULT_OPTIONS}


def _predictions(task: Task, result: np.ndarray, options: dict[str, Any]) -> list[Any]:
    if result.dtype == object:
        return [bytes(v).decode("utf-8", errors="replace") for v in result.ravel()]
    if (
        task is Task.SEQUENCE_CLASSIFICATION
        and options.get("return_probabilities")
        and not options.get("return_raw_logits")
    ):
        return [{str(i): float(p) for i, p in enumerate(row)} for row in result]
    return [row.tolist() for row in result]


def _texts_and_pairs(task: Task, instances: list[Any]) -> tuple[list[str], list[str] | None]:
    if task is Task.RERANK:
        pairs = []
        for index, item in enumerate(instances):
            if (
                isinstance(item, dict)
                and isinstance(item.get("text"), str)
                and isinstance(item.get("text_pair"), str)
            ):
                pairs.append((item["text"], item["text_pair"]))
            elif (
                isinstance(item, list) and len(item) == 2 and all(isinstance(x, str) for x in item)
            ):
                pairs.append((item[0], item[1]))
            else:
                raise InvalidArgument(
                    f"instances[{index}]: rerank instances are [query, document] pairs"
                )
        return [q for q, _ in pairs], [d for _, d in pairs]
    for index, item in enumerate(instances):
        if not isinstance(item, str):
            raise InvalidArgument(f"instances[{index}]: {task.value} instances are strings")
    return list(instances), None


class KServeServing:
    def __init__(self, mesh: MeshClient, generation: GenerationServing) -> None:
        self.mesh = mesh
        self.generation = generation

    def model_names(self, call: CallContext) -> list[str]:
        """The models the caller may use (KServe's V1 list names models, not public names)."""
        return [n for n in self.mesh.names(call) if n in self.mesh.routes.by_name]

    def ready(self, name: str) -> bool:
        return self.mesh.routes.model_ready(name)

    def generative(self, name: str) -> bool:
        route = self.mesh.routes.by_name.get(name)
        return route is not None and route.task.is_generative

    async def v1_predict(
        self, name: str, body: V1PredictRequest, call: CallContext
    ) -> V1PredictResponse:
        route = self.mesh.route(name, call)
        if route.task.is_generative:
            return await self._v1_generate(route, body, call)
        options = _options(body.parameters)
        texts, pairs = _texts_and_pairs(route.task, body.instances)
        encoded = await self.mesh.encode(route, call, texts=texts, pairs=pairs, parameters=options)
        return V1PredictResponse(
            predictions=_predictions(route.task, np.asarray(encoded.output), options)
        )

    async def _v1_generate(
        self, route: ModelRoute, body: V1PredictRequest, call: CallContext
    ) -> V1PredictResponse:
        if not all(isinstance(i, str) for i in body.instances):
            raise InvalidArgument(
                f"instances of {route.task.value} model '{route.name}' are prompt strings"
            )
        fields = {
            "temperature": 0.0,
            **(body.parameters or {}),
            "model": route.name,
            "prompt": body.instances,
            "stream": False,
            "n": 1,
        }
        try:
            request = CompletionRequest.model_validate(fields)
        except ValidationError as error:
            problems = "; ".join(
                f"parameters.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors()
            )
            raise InvalidArgument(problems) from None
        response = await self.generation.completions(request, call)
        assert isinstance(response, CompletionResponse), "stream=False answers in one response"
        return V1PredictResponse(
            predictions=[c.text for c in sorted(response.choices, key=lambda c: c.index)]
        )

    async def v2_infer(
        self, name: str, body: V2InferRequest, binary_tail: bytes, call: CallContext
    ) -> InferResponse:
        """`binary_tail`: the raw input bytes after the JSON header (binary.py)."""
        route = self.mesh.route(name, call)
        self.mesh.limits.requested_outputs(len(body.outputs or []))
        infer = request_from_json(name, body, binary_inputs(body, binary_tail))
        if not infer.id:
            infer.id = call.request_id
        text_inputs = all(t.datatype == "BYTES" for t in infer.inputs)
        if route.task.is_generative or not text_inputs:
            prompt_tokens, output_tokens = await self._reserve_direct(route, infer, call)
            response = await self.mesh.infer_engine(route, infer, call)
            if call.quota is not None:
                counted = _reported_tokens(response)
                await call.quota.settle(
                    *(counted if counted is not None else (prompt_tokens, output_tokens))
                )
        else:
            response = await self._v2_encode(route, infer, call)
        response.model_name = name
        if body.id:
            response.id = body.id
        return response

    async def _reserve_direct(
        self, route: ModelRoute, infer: InferRequest, call: CallContext
    ) -> tuple[int, int]:
        """Reserve a request the engine takes as it is: a generation's prompt tokens (the
        tokenizer counts a text prompt) plus its output estimate, or an encoder tensor
        request's tokens (its attention mask, else its input_ids). (prompt, output) reserved."""
        if call.quota is None:
            return 0, 0
        if route.task.is_generative:
            generate, _ = llm_tensors.parse_generate_request(infer, call.request_id)
            if generate.prompt_token_ids is not None:
                prompt = len(generate.prompt_token_ids)
            else:
                assert generate.prompt is not None, "a generation has text or ids"
                prompt = len((await self.mesh.tokenize(route, call, generate.prompt)).input_ids)
            max_tokens = generate.sampling.max_tokens
            estimate = self.mesh.settings.output_token_estimate
            output = estimate if max_tokens is None else min(max_tokens, estimate)
            output *= max(1, generate.sampling.n)
        else:
            tensor = infer.input("attention_mask") or infer.input("input_ids")
            prompt = 0
            if tensor is not None:
                data = np.asarray(tensor.data)
                prompt = int(data.sum()) if tensor.name == "attention_mask" else int(data.size)
            output = 0
        await call.quota.reserve(prompt, output)
        return prompt, output

    async def _v2_encode(
        self, route: ModelRoute, infer: InferRequest, call: CallContext
    ) -> InferResponse:
        texts, pairs = encoder_inputs_from(infer, route.task, tokens=False).segments()
        options = _options(infer.parameters)
        encoded = await self.mesh.encode(route, call, texts=texts, pairs=pairs, parameters=options)
        result = np.asarray(encoded.output)
        output = Tensor(RESULT_OUTPUT, datatype_of(result), result)
        return InferResponse(model_name=route.name, id=infer.id, outputs=[output])

    async def v2_metadata(self, name: str, call: CallContext) -> dict[str, Any]:
        return await self.mesh.engine_metadata(self.mesh.route(name, call), call)


def _reported_tokens(response: InferResponse) -> tuple[int, int] | None:
    """(prompt, output) tokens an engine's generation answer reports, when it does."""
    outputs = {t.name: t.data for t in response.outputs}
    if "num_input_tokens" in outputs and "num_output_tokens" in outputs:
        prompt = int(np.asarray(outputs["num_input_tokens"]).ravel()[0])
        return prompt, int(np.asarray(outputs["num_output_tokens"]).sum())
    return None
