"""The gateway's gRPC calls to tokenizers and engines: typed values in and out.

The only gateway module that builds or reads OIP v2 messages. Every call
carries a deadline (the request's remaining budget) and the request id as
`x-request-id` metadata; a failed call (or a stream's error response) raises the
`HfmeshError` its status means.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator

import grpc
import numpy as np

from services.common.codec import InferRequest, InferResponse, Tensor, as_bytes_array, datatype_of
from services.common.converters import (
    error_from_stream,
    infer_request_to_pb,
    infer_response_from_pb,
)
from services.common.engine import GenerateDelta
from services.common.errors import DeadlineExceeded, from_rpc_error
from services.common.llm_tensors import delta_from_response
from services.common.logs import REQUEST_ID_HEADER
from services.common.pb import inference_pb2 as pb
from services.gateway.routing import Replica


@dataclass
class CallContext:
    """One HTTP request's identity and deadline, shared by all its gRPC hops."""

    request_id: str
    deadline: float  # time.monotonic() seconds

    def timeout(self, cap: float | None = None) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise DeadlineExceeded("the request's deadline passed")
        return min(left, cap) if cap else left

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return ((REQUEST_ID_HEADER, self.request_id),)


@dataclass
class Rendered:
    input_ids: list[int]
    prompt: str
    max_model_len: int | None


def _bytes_tensor(name: str, value: str | bytes) -> Tensor:
    return Tensor(name, "BYTES", as_bytes_array([value]))


def _bool_tensor(name: str, value: bool) -> Tensor:
    return Tensor(name, "BOOL", np.asarray([value], dtype=np.bool_))


async def infer(replica: Replica, request: InferRequest, call: CallContext, *, cap: float | None = None) -> InferResponse:
    try:
        reply = await replica.stub.ModelInfer(
            infer_request_to_pb(request, raw=True), timeout=call.timeout(cap), metadata=call.metadata
        )
    except grpc.aio.AioRpcError as error:
        raise from_rpc_error(error) from None
    return infer_response_from_pb(reply)


def _outputs(response: InferResponse) -> dict[str, np.ndarray]:
    return {t.name: t.data for t in response.outputs}


# -- tokenizer ---------------------------------------------------------------


async def render(replica: Replica, model: str, call: CallContext, *, cap: float, **fields: Any) -> Rendered:
    """`M.render`. `fields`: messages/tools/documents/chat_template_kwargs (JSON-able),
    text_input/chat_template (str), add_generation_prompt/continue_final_message/add_special_tokens (bool)."""
    inputs = []
    for name, value in fields.items():
        if value is None:
            continue
        if isinstance(value, bool):
            inputs.append(_bool_tensor(name, value))
        elif isinstance(value, str):
            inputs.append(_bytes_tensor(name, value))
        else:
            inputs.append(_bytes_tensor(name, json.dumps(value)))
    response = await infer(replica, InferRequest(f"{model}.render", inputs, id=call.request_id), call, cap=cap)
    out = _outputs(response)
    limit = response.parameters.get("max_model_len")
    return Rendered(
        input_ids=[int(v) for v in out["input_ids"].ravel()],
        prompt=bytes(out["prompt"].ravel()[0]).decode("utf-8"),
        max_model_len=int(limit) if limit else None,
    )


async def preprocess(
    replica: Replica, model: str, texts: list[str], pairs: list[str] | None, call: CallContext, *, cap: float
) -> dict[str, np.ndarray]:
    inputs = [Tensor("text", "BYTES", as_bytes_array(texts))]
    if pairs is not None:
        inputs.append(Tensor("text_pair", "BYTES", as_bytes_array(pairs)))
    response = await infer(replica, InferRequest(f"{model}.preprocess", inputs, id=call.request_id), call, cap=cap)
    return _outputs(response)


async def postprocess(
    replica: Replica,
    model: str,
    raw: dict[str, np.ndarray],
    encoded: dict[str, np.ndarray],
    call: CallContext,
    *,
    cap: float,
    parameters: dict[str, Any] | None = None,
) -> np.ndarray:
    inputs = [Tensor(n, datatype_of(a), a) for n, a in raw.items()]
    inputs += [Tensor(n, "INT64", a) for n, a in encoded.items() if n in ("input_ids", "attention_mask")]
    request = InferRequest(f"{model}.postprocess", inputs, id=call.request_id, parameters=parameters or {})
    return _outputs(await infer(replica, request, call, cap=cap))["output-0"]


async def token_strings(replica: Replica, model: str, ids: list[int], call: CallContext, *, cap: float) -> list[str]:
    request = InferRequest(
        f"{model}.detokenize",
        [Tensor("input_ids", "INT64", np.asarray(ids, dtype=np.int64))],
        id=call.request_id,
        requested_outputs=["tokens"],
    )
    out = _outputs(await infer(replica, request, call, cap=cap))
    return [bytes(t).decode("utf-8", errors="replace") for t in out["tokens"].ravel()]


async def detokenize(replica: Replica, model: str, ids: list[int], call: CallContext, *, cap: float) -> str:
    request = InferRequest(
        f"{model}.detokenize", [Tensor("input_ids", "INT64", np.asarray(ids, dtype=np.int64))], id=call.request_id
    )
    out = _outputs(await infer(replica, request, call, cap=cap))
    return bytes(out["text_output"].ravel()[0]).decode("utf-8")


# -- engines -----------------------------------------------------------------


def generate_request(model: str, input_ids: list[int], sampling: dict[str, Any], *, logprobs: bool, request_id: str) -> InferRequest:
    inputs = [
        Tensor("input_ids", "INT64", np.asarray(input_ids, dtype=np.int64)),
        _bytes_tensor("sampling_parameters", json.dumps(sampling)),
        _bool_tensor("stream", True),
        _bool_tensor("exclude_input_in_output", True),
    ]
    if logprobs:
        inputs.append(_bool_tensor("return_logprobs", True))
    return InferRequest(model, inputs, id=request_id, parameters={"coalesce_deltas": True})


async def stream_generate(
    replica: Replica, request: InferRequest, call: CallContext
) -> AsyncIterator[GenerateDelta]:
    """`ModelStreamInfer` with one request; closing the iterator cancels the call."""
    message = infer_request_to_pb(request, raw=True)

    async def requests():
        yield message

    stream = replica.stub.ModelStreamInfer(requests(), timeout=call.timeout(), metadata=call.metadata)
    try:
        async for reply in stream:
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
