"""The tokenizer service's OIP v2 `GRPCInferenceService`: a thin adapter.

Protobuf → `converters` → the shared contracts (`tokenizer_tensors`,
`encoder_tensors`: typed values) → `TokenizerCore` (on its thread pool) → the
contracts → protobuf. Errors are raised as `HfmeshError`s and become statuses in
`services.common.server.ErrorInterceptor` (stream responses: `stream_error`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import grpc
import numpy as np

from services.common import tokenizer_tensors as tt
from services.common import tracing
from services.common.codec import InferRequest, InferResponse, Tensor, as_bytes_array, datatype_of
from services.common.converters import (
    infer_request_from_pb,
    infer_response_to_pb,
    model_metadata_to_pb,
    stream_error,
)
from services.common.encoder_tensors import RESULT_OUTPUT, encoder_inputs_from
from services.common.engine import ModelInfo
from services.common.errors import HfmeshError, InternalError, NotFound, Unavailable, Unimplemented
from services.common.logs import request_id_var
from services.common.pb import inference_pb2 as pb
from services.common.pb import inference_pb2_grpc as pb_grpc
from services.common.service_metrics import ServiceMetrics
from services.common.version import VERSION
from services.tokenizer.core import TokenizerCore, TokenizerModel
from services.tokenizer.predictor import PredictorClient
from services.tokenizer.tensors import model_infos

logger = logging.getLogger(__name__)


class TokenizerServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(
        self,
        *,
        server_name: str = "hfmesh-tokenizer",
        predictor: PredictorClient | None = None,
        metrics: ServiceMetrics | None = None,
    ) -> None:
        self.server_name = server_name
        self.predictor = predictor
        self.metrics = metrics or ServiceMetrics("tokenizer")
        self.core: TokenizerCore | None = None  # set once the tokenizers are loaded

    def attach(self, core: TokenizerCore) -> None:
        self.core = core

    # -- models --------------------------------------------------------------

    def infos(self) -> list[ModelInfo]:
        if self.core is None:
            return []
        with_predictor = self.predictor is not None
        models = self.core.models.values()
        return [info for m in models for info in model_infos(m, with_predictor=with_predictor)]

    def _info(self, name: str) -> ModelInfo:
        for info in self.infos():
            if info.name == name:
                return info
        if self.core is None:
            raise Unavailable("the tokenizer service is still loading")
        known = ", ".join(i.name for i in self.infos())
        raise NotFound(f"unknown model '{name}' (this tokenizer serves: {known})")

    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.core is not None)

    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=any(i.name == request.name for i in self.infos()))

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(
            name=self.server_name, version=VERSION, extensions=["binary_tensor_data"]
        )

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        return model_metadata_to_pb(self._info(request.name))

    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryIndexResponse:
        response = pb.RepositoryIndexResponse()
        for info in self.infos():
            response.models.add(name=info.name, version="1", state=info.state.value)
        return response

    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryModelLoadResponse:
        self._info(request.model_name)  # every model is loaded at startup: a no-op
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryModelUnloadResponse:
        self._info(request.model_name)
        raise Unimplemented("the tokenizer service's models are fixed at startup")

    # -- inference -----------------------------------------------------------

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
        infer = infer_request_from_pb(request)
        response = await self.infer(infer)
        return infer_response_to_pb(response, raw=infer.raw)

    async def ModelStreamInfer(
        self,
        request_iterator: AsyncIterator[pb.ModelInferRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
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
        base, operation = tt.split_model_name(infer.model_name, set(self.core.models))
        model = self.core.model(base)
        if operation is None and self.predictor is None:
            raise NotFound(
                f"unknown model '{infer.model_name}'; the tokenizer serves '{base}.render', "
                f"'{base}.preprocess', "
                f"'{base}.postprocess' and '{base}.detokenize' (and '{base}' only with "
                "--predictor_host)"
            )
        handler = {
            tt.RENDER: self._render,
            tt.PREPROCESS: self._preprocess,
            tt.POSTPROCESS: self._postprocess,
            tt.DETOKENIZE: self._detokenize,
            None: self._transform,
        }[operation]
        name = _span_name(operation, infer)
        with self.metrics.track(name), tracing.span(name, {"gen_ai.request.model": base}):
            response = await handler(self.core, model, infer)
        if infer.requested_outputs:
            wanted = set(infer.requested_outputs)
            response.outputs = [o for o in response.outputs if o.name in wanted]
        return response

    async def _render(
        self, core: TokenizerCore, model: TokenizerModel, infer: InferRequest
    ) -> InferResponse:
        rendered = await core.run(model.render, tt.render_from(infer))
        return tt.render_response(infer, rendered)

    async def _preprocess(
        self, core: TokenizerCore, model: TokenizerModel, infer: InferRequest
    ) -> InferResponse:
        texts, pairs = encoder_inputs_from(infer, model.options.task, tokens=False).segments()
        return _response(infer, await core.run(model.preprocess, texts, pairs))

    async def _postprocess(
        self, core: TokenizerCore, model: TokenizerModel, infer: InferRequest
    ) -> InferResponse:
        outputs, inputs = tt.postprocess_from(infer)
        result = await core.run(model.postprocess, outputs, inputs, infer.parameters)
        arrays = {RESULT_OUTPUT: result}
        if tt.LABEL_OUTPUT in infer.requested_outputs:
            arrays[tt.LABEL_OUTPUT] = as_bytes_array(model.class_names(outputs))
        return _response(infer, arrays)

    async def _detokenize(
        self, core: TokenizerCore, model: TokenizerModel, infer: InferRequest
    ) -> InferResponse:
        ids, skip = tt.detokenize_from(infer)
        texts = await core.run(model.detokenize, ids, skip_special_tokens=skip)
        tokens = token_strs = None
        if "tokens" in infer.requested_outputs:
            tokens = await core.run(model.token_strings, ids)
        if "token_strs" in infer.requested_outputs:
            token_strs = await core.run(model.vocabulary_strings, ids)
        return tt.detokenize_response(infer, texts, tokens, ids.shape, token_strs)

    async def _transform(
        self, core: TokenizerCore, model: TokenizerModel, infer: InferRequest
    ) -> InferResponse:
        """KServe's transformer: text → preprocess → predictor → postprocess → result."""
        task = model.options.task
        if task.is_generative:
            raise Unimplemented(
                f"model '{model.name}' is {task.value}: "
                "send generation to an engine, not the transformer"
            )
        assert self.predictor is not None  # no predictor: `infer` answers NOT_FOUND
        texts, pairs = encoder_inputs_from(infer, task, tokens=False).segments()
        encoded = await core.run(model.preprocess, texts, pairs)
        names = model.options.tensor_input_names or tuple(encoded)
        sent = {name: encoded[name] for name in names if name in encoded}
        raw = await self.predictor.infer(
            model.name, sent, request_id=infer.id or request_id_var.get()
        )
        result = await core.run(model.postprocess, raw, encoded, infer.parameters)
        return _response(infer, {RESULT_OUTPUT: result})


def _span_name(operation: str | None, infer: InferRequest) -> str:
    """The operation's span: `render` (a chat template) or `tokenize` (plain text) for
    `M.render`, the operation otherwise, `transform` for the KServe transformer path."""
    if operation == tt.RENDER:
        return "tokenize" if any(t.name == "text_input" for t in infer.inputs) else "render"
    return operation or "transform"


def _response(infer: InferRequest, arrays: dict[str, np.ndarray]) -> InferResponse:
    outputs = [Tensor(name, datatype_of(array), array) for name, array in arrays.items()]
    return InferResponse(model_name=infer.model_name, id=infer.id, outputs=outputs)
