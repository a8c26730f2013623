"""The OIP v2 `GRPCInferenceService` for any `Engine`: both engines' gRPC front.

Protobuf in → `converters` → the contract modules (`llm_tensors` for generative
models, the Triton vLLM-backend tensors; `encoder_tensors` for encoder models, text
or token tensors) → engine call → protobuf out. What this module adds itself is the
transport's behaviour: health, metadata and the repository (models and LoRA adapters: a load
with a `lora_path` is an adapter's, any other a model's), and the stream handling below.

`ModelStreamInfer` is decoupled, as in Triton: several requests may share one
stream and run concurrently; a request's failure is sent as that response's
`error_message` and the stream stays open. When the call is cancelled, every
generation it started is aborted in the engine. Its initial metadata reports the
requests in flight on this server (`load_metrics.ENGINE_IN_FLIGHT`), which the
gateway's routing adds to the load it sees itself.

A streamed generation sends one response per engine delta, as Triton does. A
request with the `coalesce_deltas` parameter set allows fewer, larger responses
when the stream's reader is behind: its deltas of one sequence that are already
queued when the next response is written go out as one response (text and ids
concatenated, the last delta's finish reason and counts).
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import grpc
import numpy as np

from services.common import llm_tensors, tracing
from services.common.codec import InferRequest, InferResponse, Tensor, as_bytes_array, datatype_of
from services.common.converters import (
    infer_request_from_pb,
    infer_response_to_pb,
    model_metadata_to_pb,
    stream_error,
)
from services.common.encoder_tensors import encoder_inputs_from
from services.common.engine import (
    EncodeRequest,
    Engine,
    GenerateDelta,
    GenerateRequest,
    ModelInfo,
)
from services.common.errors import (
    HfmeshError,
    InternalError,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from services.common.load_metrics import ENGINE_IN_FLIGHT
from services.common.logs import request_id_var
from services.common.pb import inference_pb2 as pb
from services.common.pb import inference_pb2_grpc as pb_grpc
from services.common.version import VERSION

logger = logging.getLogger(__name__)

EXTENSIONS = [
    "model_repository",
    "model_repository(unload_dependents)",
    "schedule_policy",
    "binary_tensor_data",
]


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """`max_pending` caps the requests held at once (a generation counts its `n` sequences):
    the engine's own backstop behind the gateway's admission control. Over it a request is
    refused at once with UNAVAILABLE (+ `retry-after`), before the engine sees it."""

    def __init__(self, engine: Engine, *, server_name: str, max_pending: int | None = None) -> None:
        self.engine = engine
        self.server_name = server_name
        self.in_flight = 0  # stream requests running, from every client
        self.max_pending = max_pending
        self.pending = 0

    @contextmanager
    def _admitted(self, slots: int) -> Iterator[None]:
        if self.max_pending is not None and self.pending + slots > self.max_pending:
            raise Unavailable(
                f"the engine is at capacity ({self.pending} of {self.max_pending} requests held; "
                "--max_pending_requests)"
            )
        self.pending += slots
        try:
            yield
        finally:
            self.pending -= slots

    # -- health and metadata -------------------------------------------------

    def _model(self, name: str) -> ModelInfo:
        for info in self.engine.models():
            if info.name == name:
                return info
        known = ", ".join(m.name for m in self.engine.models()) or "none"
        raise NotFound(f"unknown model '{name}' (this server serves: {known})")

    def _ready_model(self, name: str) -> ModelInfo:
        info = self._model(name)
        if not info.ready:
            raise Unavailable(
                f"model '{name}' is not ready "
                f"({info.state.value.lower()}{': ' + info.reason if info.reason else ''})"
            )
        return info

    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self.engine.healthy())

    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerReadyResponse:
        models = self.engine.models()
        ready = self.engine.healthy() and bool(models) and all(m.ready for m in models)
        return pb.ServerReadyResponse(ready=ready)

    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelReadyResponse:
        try:
            return pb.ModelReadyResponse(ready=self._model(request.name).ready)
        except NotFound:
            return pb.ModelReadyResponse(ready=False)

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(
            name=self.server_name, version=VERSION, extensions=EXTENSIONS
        )

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        return model_metadata_to_pb(self._model(request.name))

    # -- repository ----------------------------------------------------------

    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryIndexResponse:
        response = pb.RepositoryIndexResponse()
        for info in self.engine.models():
            if request.ready and not info.ready:
                continue
            response.models.add(
                name=info.name, version="1", state=info.state.value, reason=info.reason
            )
        return response

    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryModelLoadResponse:
        path = _lora_path(request.parameters)
        if path:
            await self.engine.load_adapter(request.model_name, path)
        else:
            await self.engine.load_model(request.model_name)
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryModelUnloadResponse:
        info = self._model(request.model_name)
        if info.base_model is not None:
            await self.engine.unload_adapter(info.name)
        else:
            await self.engine.unload_model(info.name)
        return pb.RepositoryModelUnloadResponse()

    # -- inference -----------------------------------------------------------

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
        infer = infer_request_from_pb(request)
        info = self._ready_model(infer.model_name)
        generative = info.task.is_generative
        with tracing.engine_request(infer.model_name, generative=generative, request_id=infer.id):
            if generative:
                response = await self._generate_whole(infer)
            else:
                response = await self._encode(infer, info)
        return infer_response_to_pb(response, raw=infer.raw)

    async def ModelStreamInfer(
        self,
        request_iterator: AsyncIterator[pb.ModelInferRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        queue: asyncio.Queue[PendingDeltas | pb.ModelStreamInferResponse | None] = asyncio.Queue()
        tasks: set[asyncio.Task] = set()

        async def run_one(message: pb.ModelInferRequest) -> None:
            self.in_flight += 1
            try:
                async for response in self._stream_one(message):
                    if isinstance(response, pb.ModelInferResponse):
                        await queue.put(pb.ModelStreamInferResponse(infer_response=response))
                    else:
                        await queue.put(response)
            except HfmeshError as error:
                await queue.put(stream_error(message, error))
            except Exception:  # noqa: BLE001 - one request's bug must not end the stream
                logger.exception("stream request failed")
                await queue.put(stream_error(message, InternalError()))
            finally:
                self.in_flight -= 1

        async def read_requests() -> None:
            async for message in request_iterator:
                task = asyncio.ensure_future(run_one(message))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if tasks:
                await asyncio.gather(*list(tasks), return_exceptions=True)
            await queue.put(None)

        await context.send_initial_metadata(((ENGINE_IN_FLIGHT, str(self.in_flight)),))
        reader = asyncio.ensure_future(read_requests())
        try:
            ended = False
            while not ended:
                queued = [await queue.get()]
                while not queue.empty():
                    queued.append(queue.get_nowait())
                # None, the end of the stream, is the last item ever queued.
                ready = [item for item in queued if item is not None]
                ended = len(ready) < len(queued)
                for item in _coalesce(ready):
                    yield item
        finally:
            reader.cancel()
            for task in list(tasks):
                task.cancel()
            await asyncio.gather(reader, *tasks, return_exceptions=True)

    async def _stream_one(
        self, message: pb.ModelInferRequest
    ) -> AsyncIterator[pb.ModelInferResponse | PendingDeltas]:
        infer = infer_request_from_pb(message)
        info = self._ready_model(infer.model_name)
        generative = info.task.is_generative
        with tracing.engine_request(infer.model_name, generative=generative, request_id=infer.id):
            async for response in self._stream_traced(infer, info):
                yield response

    async def _stream_traced(
        self, infer: InferRequest, info: ModelInfo
    ) -> AsyncIterator[pb.ModelInferResponse | PendingDeltas]:
        if not info.task.is_generative:
            yield infer_response_to_pb(await self._encode(infer, info), raw=infer.raw)
            return
        generate, options = llm_tensors.parse_generate_request(
            infer, self._engine_request_id(infer)
        )
        n = generate.sampling.n
        if not options.stream:
            response = await self._collect(infer, generate, options)
            yield infer_response_to_pb(response, raw=infer.raw)
        else:
            async for delta in self._deltas(generate):
                if options.coalesce_deltas:
                    yield PendingDeltas(infer, options, n, [delta])
                else:
                    yield infer_response_to_pb(
                        llm_tensors.response_for(infer, options, [delta], n=n), raw=infer.raw
                    )
        if options.empty_final_response:
            yield infer_response_to_pb(llm_tensors.empty_final_response(infer), raw=infer.raw)

    # -- generation helpers --------------------------------------------------

    def _engine_request_id(self, infer: InferRequest) -> str:
        base = infer.id or request_id_var.get()
        return f"{base}-{uuid.uuid4().hex[:8]}" if base and base != "-" else uuid.uuid4().hex

    async def _deltas(self, generate: GenerateRequest) -> AsyncIterator[GenerateDelta]:
        """Engine deltas; a cancelled caller aborts the engine request."""
        with self._admitted(generate.sampling.n):
            finished = False
            traced = tracing.current_request()
            try:
                async for delta in self.engine.generate(generate):
                    if traced is not None:
                        traced.delta(delta)
                    yield delta
                finished = True
            finally:
                if not finished:
                    await asyncio.shield(self.engine.abort(generate.request_id))

    async def _generate_whole(self, infer: InferRequest) -> InferResponse:
        generate, options = llm_tensors.parse_generate_request(
            infer, self._engine_request_id(infer)
        )
        return await self._collect(infer, generate, options)

    async def _collect(
        self, infer: InferRequest, generate: GenerateRequest, options: llm_tensors.LLMOptions
    ) -> InferResponse:
        by_index: dict[int, list[GenerateDelta]] = {}
        async for delta in self._deltas(generate):
            by_index.setdefault(delta.index, []).append(delta)
        prefix = (
            "" if options.exclude_input_in_output or generate.prompt is None else generate.prompt
        )
        n = generate.sampling.n
        if n == 1:
            return llm_tensors.response_for(infer, options, by_index.get(0, []), text_prefix=prefix)
        return _combine_sequences(infer, options, by_index, n, prefix)

    # -- encoders ------------------------------------------------------------

    async def _encode(self, infer: InferRequest, info: ModelInfo) -> InferResponse:
        inputs = encoder_inputs_from(infer, info.task)
        request = EncodeRequest(
            request_id=self._engine_request_id(infer),
            model=info.name,
            texts=inputs.texts,
            pairs=inputs.pairs,
            tensors=inputs.tensors,
            options=dict(infer.parameters),
        )
        with self._admitted(1):
            result = await self.engine.encode(request)
        outputs = [
            Tensor(name, datatype_of(array), array) for name, array in result.outputs.items()
        ]
        if infer.requested_outputs:
            wanted = set(infer.requested_outputs)
            unknown = wanted - {t.name for t in outputs}
            if unknown:
                raise InvalidArgument(
                    f"unknown output '{sorted(unknown)[0]}' for model '{info.name}'"
                )
            outputs = [t for t in outputs if t.name in wanted]
        return InferResponse(model_name=infer.model_name, id=infer.id, outputs=outputs)


def _combine_sequences(
    infer: InferRequest,
    options: llm_tensors.LLMOptions,
    by_index: dict[int, list[GenerateDelta]],
    n: int,
    prefix: str,
) -> InferResponse:
    texts: list[str] = []
    ids: list[list[int]] = []
    reasons: list[str] = []
    counts: list[int] = []
    num_input = 0
    for index in range(n):
        deltas = by_index.get(index, [])
        texts.append(prefix + "".join(d.text for d in deltas))
        ids.append([t for d in deltas for t in d.token_ids])
        reasons.append(deltas[-1].finish_reason or "" if deltas else "")
        counts.append(deltas[-1].num_output_tokens if deltas else 0)
        num_input = deltas[-1].num_input_tokens if deltas else num_input
    width = max((len(x) for x in ids), default=0)
    padded = np.full((n, width), -1, dtype=np.int64)
    for row, values in enumerate(ids):
        padded[row, : len(values)] = values
    outputs = [
        Tensor("text_output", "BYTES", as_bytes_array(texts)),
        Tensor("output_ids", "INT64", padded),
        Tensor("finish_reason", "BYTES", as_bytes_array(reasons)),
        Tensor("num_input_tokens", "INT64", np.asarray([num_input], dtype=np.int64)),
        Tensor("num_output_tokens", "INT64", np.asarray(counts, dtype=np.int64)),
    ]
    if options.requested_outputs:
        outputs = [t for t in outputs if t.name in set(options.requested_outputs)]
    return InferResponse(model_name=infer.model_name, id=infer.id, outputs=outputs)


@dataclass
class PendingDeltas:
    """Deltas of one streamed sequence not yet encoded: queued responses of one
    sequence can still become one."""

    infer: InferRequest
    options: llm_tensors.LLMOptions
    n: int
    deltas: list[GenerateDelta]

    def joins(self, other: PendingDeltas) -> bool:
        return (
            other.infer is self.infer
            and other.deltas[0].index == self.deltas[-1].index
            and self.deltas[-1].finish_reason is None
        )

    def encode(self) -> pb.ModelStreamInferResponse:
        response = llm_tensors.response_for(self.infer, self.options, self.deltas, n=self.n)
        return pb.ModelStreamInferResponse(
            infer_response=infer_response_to_pb(response, raw=self.infer.raw)
        )


def _coalesce(
    queued: Iterable[PendingDeltas | pb.ModelStreamInferResponse],
) -> list[pb.ModelStreamInferResponse]:
    """Queued responses in order, each sequence's consecutive deltas merged into one
    response. Only a request's own order matters, so another request's responses
    in between do not stop a merge."""
    out: list[PendingDeltas | pb.ModelStreamInferResponse] = []
    latest: dict[int, int] = {}  # id(request) -> position in out of its latest response
    for item in queued:
        if isinstance(item, PendingDeltas):
            at = latest.get(id(item.infer))
            previous = out[at] if at is not None else None
            if isinstance(previous, PendingDeltas) and previous.joins(item):
                previous.deltas += item.deltas
                continue
            latest[id(item.infer)] = len(out)
        else:
            latest.clear()  # an error or a final marker: nothing merges across it
        out.append(item)
    return [item.encode() if isinstance(item, PendingDeltas) else item for item in out]


def _lora_path(parameters) -> str:
    """The adapter folder: a `lora_path` parameter, or `{"lora_path": ...}` in Triton's
    `config` parameter (what `tritonclient`'s `load_model(name, config=...)` sends)."""
    if "lora_path" in parameters:
        return parameters["lora_path"].string_param
    if "config" in parameters:
        try:
            config = json.loads(parameters["config"].string_param or "{}")
        except json.JSONDecodeError as error:
            raise InvalidArgument(f"parameter 'config': not valid JSON ({error})") from None
        if isinstance(config, dict) and isinstance(config.get("lora_path"), str):
            return config["lora_path"]
    return ""
