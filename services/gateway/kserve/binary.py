"""The V2 REST binary tensor data extension, both ways (Triton's `binary_tensor_data`).

Request: when the `Inference-Header-Content-Length` header is present, the body is that many
bytes of JSON followed by the raw bytes of every input whose `parameters.binary_data_size` is
set, concatenated in the order the inputs are listed. Raw bytes are the OIP raw form: little
endian; a BYTES element is a 4-byte little-endian length, then the bytes. Without the header the
whole body is JSON. A header that is not an integer or exceeds the body, a binary input that also
carries `data`, sizes that do not add up to the tail, and sizes that do not fit the shape and
datatype are each a 400 naming what is wrong.

Response: an output is sent raw when its requested output says `parameters.binary_data: true`,
or, for outputs whose choice is not stated, when the request parameter `binary_data_output` is
true. Raw outputs carry `parameters.binary_data_size` and no `data`; the body is then the JSON
header followed by their bytes in output order, with the header's length in
`Inference-Header-Content-Length` and the media type `application/octet-stream`.
"""

from __future__ import annotations

from services.common.codec import InferResponse, Tensor, decode_raw, encode_raw, parse_bool
from services.common.errors import InvalidArgument
from services.gateway.kserve.protocol import V2InferRequest, V2InferResponse

HEADER_LENGTH = "Inference-Header-Content-Length"
BINARY_SIZE = "binary_data_size"


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """(JSON header, binary tail) of a V2 infer body; the one place that reads the header."""
    if header_length is None:
        return body, b""
    try:
        length = int(header_length)
    except ValueError:
        raise InvalidArgument(
            f"header {HEADER_LENGTH}: {header_length!r} is not an integer"
        ) from None
    if length < 0 or length > len(body):
        raise InvalidArgument(
            f"header {HEADER_LENGTH}: {length} does not fit a body of {len(body)} bytes"
        )
    return body[:length], body[length:]


def _size(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidArgument(
            f"tensor '{name}': parameters.{BINARY_SIZE} must be a non-negative integer, "
            f"got {value!r}"
        )
    return value


def binary_inputs(body: V2InferRequest, tail: bytes) -> dict[int, Tensor]:
    """The binary inputs by position, cut from the tail and checked against shape and type."""
    sizes: dict[int, int] = {}
    for index, tensor in enumerate(body.inputs):
        parameters = tensor.parameters or {}
        if BINARY_SIZE not in parameters:
            continue
        sizes[index] = _size(tensor.name, parameters[BINARY_SIZE])
        if tensor.data is not None:
            raise InvalidArgument(
                f"tensor '{tensor.name}': parameters.{BINARY_SIZE} is set, so 'data' must be absent"
            )
    declared = sum(sizes.values())
    if declared != len(tail):
        hint = "" if tail else f" (is the {HEADER_LENGTH} header missing?)"
        raise InvalidArgument(
            f"the inputs' {BINARY_SIZE} add up to {declared} bytes, but {len(tail)} bytes "
            f"follow the JSON header{hint}"
        )
    tensors: dict[int, Tensor] = {}
    offset = 0
    for index, size in sizes.items():
        item = body.inputs[index]
        decoded = decode_raw(item.name, item.datatype, item.shape, tail[offset : offset + size])
        decoded.parameters = {k: v for k, v in (item.parameters or {}).items() if k != BINARY_SIZE}
        tensors[index] = decoded
        offset += size
    return tensors


def raw_outputs(body: V2InferRequest) -> dict[str, bool]:
    """Which outputs go raw: output name → choice, and `""` → the choice for the others."""
    parameters = body.parameters or {}
    choice = {"": parse_bool("binary_data_output", parameters.get("binary_data_output", False))}
    for output in body.outputs or []:
        if "binary_data" in (output.parameters or {}):
            choice[output.name] = parse_bool(
                f"outputs[{output.name}].binary_data", (output.parameters or {})["binary_data"]
            )
    return choice


def encode_response(
    answer: V2InferResponse, response: InferResponse, raw: dict[str, bool]
) -> tuple[bytes, int | None]:
    """(body, JSON header length) with the chosen outputs moved to a binary tail; the length is
    None when every output stayed JSON."""
    tensors = {t.name: t for t in response.outputs}
    tail: list[bytes] = []
    for output in answer.outputs:
        if not raw.get(output.name, raw[""]):
            continue
        data = encode_raw(tensors[output.name])
        output.data = None
        output.parameters = {**(output.parameters or {}), BINARY_SIZE: len(data)}
        tail.append(data)
    header = answer.model_dump_json(exclude_none=True).encode()
    if not tail:
        return header, None
    return header + b"".join(tail), len(header)
