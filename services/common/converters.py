"""Protobuf ↔ internal types: OIP v2 messages as `InferRequest` / `InferResponse`.

Cores never see a `*_pb2` object: servicers call `infer_request_from_pb` on the
way in and `infer_response_to_pb` on the way out; clients (the gateway, the
tokenizer's predictor client) use the two inverse functions. Servicers still
build the small health, metadata and repository messages themselves.

A failed request on a `ModelStreamInfer` stream is a response, not a status:
`stream_error` writes it with the status name in the `error_code` response
parameter (Triton's message has no status field) and `error_from_stream` reads
it back. Replies without `error_code` (Triton, other servers) are classified by
their text, the only thing they carry.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import grpc

from services.common.codec import (
    InferRequest,
    InferResponse,
    Tensor,
    contents_values,
    decode_contents,
    decode_raw,
    encode_raw,
)
from services.common.engine import ModelInfo
from services.common.errors import (
    GENERIC_INTERNAL_MESSAGE,
    HfmeshError,
    InternalError,
    InvalidArgument,
    NotFound,
    Unavailable,
    from_grpc,
)
from services.common.pb import inference_pb2 as pb


def params_from_pb(params: Mapping[str, pb.InferParameter]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in params.items():
        choice = value.WhichOneof("parameter_choice")
        out[key] = getattr(value, choice) if choice else None
    return out


def params_to_pb(target: Any, params: Mapping[str, Any]) -> None:
    """Fill a protobuf `map<string, InferParameter>` from python values."""
    for key, value in params.items():
        slot = target[key]
        if isinstance(value, bool):
            slot.bool_param = value
        elif isinstance(value, int):
            slot.int64_param = value
        elif isinstance(value, float):
            slot.double_param = value
        else:
            slot.string_param = str(value)


def infer_request_from_pb(request: pb.ModelInferRequest) -> InferRequest:
    raw = list(request.raw_input_contents)
    if raw:
        with_contents = [t.name for t in request.inputs if t.HasField("contents")]
        if with_contents:
            raise InvalidArgument(
                f"tensor '{with_contents[0]}': both raw_input_contents and contents are set; use "
                "one form"
            )
        if len(raw) != len(request.inputs):
            raise InvalidArgument(
                f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs"
            )
    names = set()
    inputs: list[Tensor] = []
    for index, tensor in enumerate(request.inputs):
        if not tensor.name:
            raise InvalidArgument(f"input {index} has no name")
        if tensor.name in names:
            raise InvalidArgument(f"tensor '{tensor.name}' is given twice")
        names.add(tensor.name)
        if raw:
            decoded = decode_raw(tensor.name, tensor.datatype, tensor.shape, raw[index])
        else:
            decoded = decode_contents(tensor.name, tensor.datatype, tensor.shape, tensor.contents)
        decoded.parameters = params_from_pb(tensor.parameters)
        inputs.append(decoded)
    return InferRequest(
        model_name=request.model_name,
        model_version=request.model_version,
        id=request.id,
        inputs=inputs,
        parameters=params_from_pb(request.parameters),
        requested_outputs=[o.name for o in request.outputs],
        raw=bool(raw),
    )


def infer_response_to_pb(response: InferResponse, *, raw: bool) -> pb.ModelInferResponse:
    """Encode in the form the request used (`raw` or typed contents)."""
    message = pb.ModelInferResponse(
        model_name=response.model_name, model_version=response.model_version, id=response.id
    )
    params_to_pb(message.parameters, response.parameters)
    for tensor in response.outputs:
        out = message.outputs.add(
            name=tensor.name, datatype=tensor.datatype, shape=list(tensor.shape)
        )
        params_to_pb(out.parameters, tensor.parameters)
        if raw:
            message.raw_output_contents.append(encode_raw(tensor))
        else:
            field_name, values = contents_values(tensor)
            getattr(out.contents, field_name).extend(values)
    return message


def infer_request_to_pb(request: InferRequest, *, raw: bool = True) -> pb.ModelInferRequest:
    """Client side: build a request (used by the gateway and the tokenizer's predictor client)."""
    message = pb.ModelInferRequest(
        model_name=request.model_name, model_version=request.model_version, id=request.id
    )
    params_to_pb(message.parameters, request.parameters)
    for tensor in request.inputs:
        entry = message.inputs.add(
            name=tensor.name, datatype=tensor.datatype, shape=list(tensor.shape)
        )
        params_to_pb(entry.parameters, tensor.parameters)
        if raw:
            message.raw_input_contents.append(encode_raw(tensor))
        else:
            field_name, values = contents_values(tensor)
            getattr(entry.contents, field_name).extend(values)
    for name in request.requested_outputs:
        message.outputs.add(name=name)
    return message


def infer_response_from_pb(message: pb.ModelInferResponse) -> InferResponse:
    """Client side: decode a response in whichever form it came."""
    raw = list(message.raw_output_contents)
    outputs = []
    for index, tensor in enumerate(message.outputs):
        if raw:
            decoded = decode_raw(tensor.name, tensor.datatype, tensor.shape, raw[index])
        else:
            decoded = decode_contents(tensor.name, tensor.datatype, tensor.shape, tensor.contents)
        decoded.parameters = params_from_pb(tensor.parameters)
        outputs.append(decoded)
    return InferResponse(
        model_name=message.model_name,
        model_version=message.model_version,
        id=message.id,
        outputs=outputs,
        parameters=params_from_pb(message.parameters),
    )


def model_metadata_to_pb(info: ModelInfo) -> pb.ModelMetadataResponse:
    message = pb.ModelMetadataResponse(name=info.name, versions=["1"], platform=info.platform)
    for spec in info.inputs:
        message.inputs.add(name=spec.name, datatype=spec.datatype, shape=list(spec.shape))
    for spec in info.outputs:
        message.outputs.add(name=spec.name, datatype=spec.datatype, shape=list(spec.shape))
    return message


def stream_error(request: pb.ModelInferRequest, error: HfmeshError) -> pb.ModelStreamInferResponse:
    """A failed stream request's response; `error_code` carries the gRPC status name."""
    response = pb.ModelInferResponse(model_name=request.model_name, id=request.id)
    response.parameters["error_code"].string_param = error.grpc_code.name
    return pb.ModelStreamInferResponse(error_message=error.message, infer_response=response)


_UNAVAILABLE_WORDS = ("not ready", "loading", "draining", "overloaded")


def error_from_stream(reply: pb.ModelStreamInferResponse) -> HfmeshError:
    """The error a stream response's `error_message` means: its `error_code` when set,
    else a guess from the text (a server that does not send one)."""
    text = reply.error_message
    named = reply.infer_response.parameters.get("error_code")
    if named is not None and named.string_param in grpc.StatusCode.__members__:
        return from_grpc(grpc.StatusCode[named.string_param], text)
    lowered = text.lower()
    if text == GENERIC_INTERNAL_MESSAGE:
        return InternalError()
    if "unknown model" in lowered:
        return NotFound(text)
    if any(word in lowered for word in _UNAVAILABLE_WORDS):
        return Unavailable(text)
    return InvalidArgument(text)
