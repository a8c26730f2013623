"""The gateway's gRPC calls to tokenizers and engines: typed values in and out.

The only gateway module that makes gRPC calls; the tensors of each call are the
shared contracts (`tokenizer_tensors`, `llm_tensors`, `encoder_tensors`). Every
call carries a deadline (the request's remaining budget) and the request id as
`x-request-id` metadata; a failed call (or a stream's error response) raises the
`HfmeshError` its status means.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np

from services.common import tokenizer_tensors as tt
from services.common import tracing
from services.common.codec import InferRequest, InferResponse
from services.common.converters import (
    error_from_stream,
    infer_request_to_pb,
    infer_response_from_pb,
)
from services.common.engine import GenerateDelta
from services.common.errors import DeadlineExceeded, from_rpc_error
from services.common.llm_tensors import delta_from_response
from services.common.load_metrics import ENGINE_IN_FLIGHT
from services.common.logs import REQUEST_ID_HEADER
from services.common.pb import inference_pb2 as pb
from services.common.tokenizer_tensors import Rendered
from services.gateway.quota import Quota
from services.gateway.replica import Replica


@dataclass
class CallContext:
    """One HTTP request's identity and deadline, shared by all its gRPC hops."""

    request_id: str
    deadline: float  # time.monotonic() seconds
    session: str | None = None  # the session key a `session` routing policy hashes
    #: The caller's tenant and budget share (None: the gateway has no tenants).
    quota: Quota | None = None

    def timeout(self, cap: float | None = None) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise DeadlineExceeded("the request's deadline passed")
        return min(left, cap) if cap else left

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return tracing.with_trace_context(((REQUEST_ID_HEADER, self.request_id),))


async def infer(
    replica: Replica, request: InferRequest, call: CallContext, *, cap: float | None = None
) -> InferResponse:
    try:
        reply = await replica.stub.ModelInfer(
            infer_request_to_pb(request, raw=True),
            timeout=call.timeout(cap),
            metadata=call.metadata,
        )
    except grpc.aio.AioRpcError as error:
        raise from_rpc_error(error) from None
    return infer_response_from_pb(reply)


# -- tokenizer (the requests and answers are `services.common.tokenizer_tensors`) --


async def render(
    replica: Replica, model: str, call: CallContext, *, cap: float, **fields: Any
) -> Rendered:
    """`M.render`; `fields` are `RenderRequest`'s (the tensor names)."""
    request = tt.render_request(model, tt.RenderRequest(**fields), request_id=call.request_id)
    return tt.rendered_from(await infer(replica, request, call, cap=cap))


async def preprocess(
    replica: Replica,
    model: str,
    texts: list[str],
    pairs: list[str] | None,
    call: CallContext,
    *,
    cap: float,
) -> dict[str, np.ndarray]:
    request = tt.preprocess_request(model, texts, pairs, request_id=call.request_id)
    return tt.outputs_of(await infer(replica, request, call, cap=cap))


async def postprocess(
    replica: Replica,
    model: str,
    raw: dict[str, np.ndarray],
    encoded: dict[str, np.ndarray],
    call: CallContext,
    *,
    cap: float,
    parameters: dict[str, Any] | None = None,
    label: bool = False,
) -> tuple[np.ndarray, list[str] | None]:
    """(task result, each row's class name when `label`)."""
    request = tt.postprocess_request(
        model, raw, encoded, request_id=call.request_id, parameters=parameters, label=label
    )
    response = await infer(replica, request, call, cap=cap)
    return tt.result_from(response), tt.labels_from(response) if label else None


async def token_strings(
    replica: Replica,
    model: str,
    ids: list[int],
    call: CallContext,
    *,
    cap: float,
    output: str = "tokens",
) -> list[str]:
    """`output`: `tokens` (each id decoded alone) or `token_strs` (vocabulary strings)."""
    request = tt.detokenize_request(model, ids, request_id=call.request_id, output=output)
    return tt.tokens_from(await infer(replica, request, call, cap=cap), output)


async def detokenize(
    replica: Replica,
    model: str,
    ids: list[int],
    call: CallContext,
    *,
    cap: float,
    skip_special_tokens: bool = True,
) -> str:
    request = tt.detokenize_request(
        model, ids, request_id=call.request_id, skip_special_tokens=skip_special_tokens
    )
    return tt.text_from(await infer(replica, request, call, cap=cap))


# -- engines -----------------------------------------------------------------


async def stream_generate(
    replica: Replica, request: InferRequest, call: CallContext
) -> AsyncIterator[GenerateDelta]:
    """`ModelStreamInfer` with one request; closing the iterator cancels the call. The
    engine's report of its requests in flight (initial metadata) goes to the replica."""
    message = infer_request_to_pb(request, raw=True)

    async def requests():
        yield message

    stream = replica.stub.ModelStreamInfer(
        requests(), timeout=call.timeout(), metadata=call.metadata
    )
    reported = False
    try:
        async for reply in stream:
            if not reported:
                reported = True
                _engine_report(replica, await stream.initial_metadata())
            if reply.error_message:
                raise error_from_stream(reply)
            if not reply.infer_response.outputs:
                continue  # an empty final response
            yield delta_from_response(reply.infer_response)
    except grpc.aio.AioRpcError as error:
        raise from_rpc_error(error) from None
    finally:
        if not stream.done():
            stream.cancel()


def _engine_report(replica: Replica, metadata: grpc.aio.Metadata | None) -> None:
    value = dict(metadata or ()).get(ENGINE_IN_FLIGHT)
    if isinstance(value, str) and value.isdigit():
        replica.engine_report(int(value))


async def model_metadata(replica: Replica, name: str, call: CallContext) -> dict[str, Any]:
    """An engine's `ModelMetadata` as the V2 REST JSON object."""
    try:
        reply = await replica.stub.ModelMetadata(
            pb.ModelMetadataRequest(name=name), timeout=call.timeout(10.0), metadata=call.metadata
        )
    except grpc.aio.AioRpcError as error:
        raise from_rpc_error(error) from None

    def tensors(items) -> list[dict[str, Any]]:
        return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in items]

    return {
        "name": reply.name,
        "versions": list(reply.versions),
        "platform": reply.platform,
        "inputs": tensors(reply.inputs),
        "outputs": tensors(reply.outputs),
    }
