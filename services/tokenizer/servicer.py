"""The tokenizer service's OIP v2 `GRPCInferenceService`: a thin adapter.

Protobuf → `converters` → `tensors` (typed values) → `TokenizerCore` (on its
thread pool) → `tensors` → protobuf. Errors are raised as `HfmeshError`s and
become statuses in `services.common.server.ErrorInterceptor`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import AsyncIterator

from services.common.codec import InferRequest, InferResponse, Tensor, as_bytes_array
from services.common.converters import (
    infer_request_from_pb,
    infer_response_to_pb,
    model_metadata_to_pb,
    stream_error,
)
from services.common.engine import ModelInfo
from services.common.errors import HfmeshError, InternalError, NotFound, Unavailable, Unimplemented
from services.common.logs import request_id_var
from services.common.pb import inference_pb2 as pb
from services.common.pb import inference_pb2_grpc as pb_grpc
from services.tokenizer import tensors as t
from services.tokenizer.core import TokenizerCore, TokenizerModel
from services.tokenizer.predictor import PredictorClient

logger = logging.getLogger(__name__)

VERSION = "0.1.0"


class TokenizerServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, *, server_name: str = "hfmesh-tokenizer", predictor: PredictorClient | None = None) -> None:
        self.server_name = server_name
        self.predictor = predictor
        self.core: TokenizerCore | None = None  # set once the tokenizers are loaded

    def attach(self, core: TokenizerCore) -> None:
        self.core = core

    # -- models --------------------------------------------------------------

    def infos(self) -> list[ModelInfo]:
        if self.core is None:
            return []
        with_predictor = self.predictor is not None
        return [info for m in self.core.models.values() for info in t.model_infos(m, with_predictor=with_predictor)]

    def _info(self, name: str) -> ModelInfo:
        for info in self.infos():
            if info.name == name:
                return info
        if self.core is None:
            raise Unavailable("the tokenizer service is still loading")
        known = ", ".join(i.name for i in self.infos())
        raise NotFound(f"unknown model '{name}' (this tokenizer serves: {known})")

    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self.core is not None)

    async def ModelReady(self, request, context):
        return pb.ModelReadyResponse(ready=any(i.name == request.name for i in self.infos()))

    async def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(name=self.server_name, version=VERSION, extensions=["binary_tensor_data"])

    async def ModelMetadata(self, request, context):
        return model_metadata_to_pb(self._info(request.name))

    async def RepositoryIndex(self, request, context):
        response = pb.RepositoryIndexResponse()
        for info in self.infos():
            response.models.add(name=info.name, version="1", state=info.state.value)
        return response

    async def RepositoryModelLoad(self, request, context):
        self._info(request.model_name)  # every model is loaded at startup: a no-op
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(self, request, context):
        self._info(request.model_name)
        raise Unimplemented("the tokenizer service's models are fixed at startup")

    # -- inference -----------------------------------------------------------

    async def ModelInfer(self, request, context):
        infer = infer_request_from_pb(request)
        response = await self.infer(infer)
        return infer_response_to_pb(response, raw=infer.raw)

    async def ModelStreamInfer(self, request_iterator, context) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Each request answered in order; a failed one answers with `error_message`."""
        async for message in request_iterator:
            try:
                infer = infer_request_from_pb(message)
                response = infer_response_to_pb(await self.infer(infer), raw=infer.raw)
                yield pb.ModelStreamInferResponse(infer_response=response)
            except HfmeshError as error:
                yield stream_error(message, error)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - one request's bug must not end the stream
                logger.exception("stream request failed")
                yield stream_error(message, InternalError())

    async def infer(self, infer: InferRequest) -> InferResponse:
        if self.core is None:
            raise Unavailable("the tokenizer service is still loading")
        base, operation = t.split_model_name(infer.model_name, set(self.core.models))
        model = self.core.model(base)
        if operation is None and self.predictor is None:
            raise NotFound(
                f"unknown model '{infer.model_name}'; the tokenizer serves '{base}.render', '{base}.preprocess', "
                f"'{base}.postprocess' and '{base}.detokenize' (and '{base}' only with --predictor_host)"
            )
        handler = {
            t.RENDER: self._render,
            t.PREPROCESS: self._preprocess,
            t.POSTPROCESS: self._postprocess,
            t.DETOKENIZE: self._detokenize,
            None: self._transform,
        }[operation]
        outputs, parameters = await handler(model, infer)
        if infer.requested_outputs:
            outputs = [o for o in outputs if o.name in set(infer.requested_outputs)]
        return InferResponse(model_name=infer.model_name, id=infer.id, outputs=outputs, parameters=parameters)

    async def _render(self, model: TokenizerModel, infer: InferRequest):
        result = await self.core.run(model.render, t.render_request_from(infer))
        parameters = {"max_model_len": model.max_model_len} if model.max_model_len else {}
        return t.render_outputs(result), parameters

    async def _preprocess(self, model: TokenizerModel, infer: InferRequest):
        texts, pairs = t.texts_from(infer, model.options.task)
        return t.tensors_out(await self.core.run(model.preprocess, texts, pairs)), {}

    async def _postprocess(self, model: TokenizerModel, infer: InferRequest):
        outputs, inputs = t.postprocess_inputs(infer)
        return await self._result(model, infer, outputs, inputs)

    async def _result(self, model: TokenizerModel, infer: InferRequest, outputs, inputs):
        """Predictor outputs + the preprocess tensors → the task's `output-0`, with the request's options."""
        result = await self.core.run(
            model.postprocess,
            outputs,
            inputs,
            probabilities=t.option(infer, "return_probabilities"),
            raw_logits=t.option(infer, "return_raw_logits"),
        )
        return t.tensors_out({t.RESULT_OUTPUT: result}), {}

    async def _detokenize(self, model: TokenizerModel, infer: InferRequest):
        ids = t.detokenize_ids(infer)
        skip = t.option(infer, "skip_special_tokens")
        texts = await self.core.run(model.detokenize, ids, skip_special_tokens=skip is not False)
        outputs = [Tensor("text_output", "BYTES", as_bytes_array(texts))]
        if "tokens" in infer.requested_outputs:
            tokens = await self.core.run(model.token_strings, ids)
            outputs.append(Tensor("tokens", "BYTES", as_bytes_array(tokens, ids.shape)))
        return outputs, {}

    async def _transform(self, model: TokenizerModel, infer: InferRequest):
        """KServe's transformer: text → preprocess → predictor → postprocess → result."""
        task = model.options.task
        if task.is_generative:
            raise Unimplemented(f"model '{model.name}' is {task.value}: send generation to an engine, not the transformer")
        texts, pairs = t.texts_from(infer, task)
        encoded = await self.core.run(model.preprocess, texts, pairs)
        names = model.options.tensor_input_names or tuple(encoded)
        sent = {name: encoded[name] for name in names if name in encoded}
        raw = await self.predictor.infer(model.name, sent, request_id=infer.id or request_id_var.get())
        return await self._result(model, infer, raw, encoded)
