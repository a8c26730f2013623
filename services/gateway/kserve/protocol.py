"""KServe V1 and Open Inference Protocol V2 REST types, and V2 JSON tensors ↔ codec tensors."""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from services.common.codec import DATATYPES, InferRequest, InferResponse, Tensor, as_bytes_array
from services.common.errors import InvalidArgument

# Request parameters that shape the HTTP answer (binary.py) and are not the model's to see.
REST_ONLY_PARAMETERS = frozenset({"binary_data_output"})


class V1PredictRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    instances: list[Any] = Field(min_length=1)
    parameters: dict[str, Any] | None = None


class V1PredictResponse(BaseModel):
    predictions: list[Any]


class V2Tensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None  # None: raw bytes after the JSON header (binary.py)


class V2RequestedOutput(BaseModel):
    name: str
    parameters: dict[str, Any] | None = None


class V2InferRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[V2Tensor] = Field(min_length=1)
    outputs: list[V2RequestedOutput] | None = None


class V2InferResponse(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[V2Tensor]


def _flatten(values: list[Any]) -> list[Any]:
    out: list[Any] = []
    stack = [values]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
        else:
            out.append(item)
    return out


def tensor_from_json(tensor: V2Tensor) -> Tensor:
    """A V2 JSON tensor (flat or nested `data`) as a codec tensor; mismatches name the tensor."""
    info = DATATYPES.get(tensor.datatype)
    if info is None:
        raise InvalidArgument(f"tensor '{tensor.name}': unknown datatype '{tensor.datatype}'")
    if any(d < 0 for d in tensor.shape):
        raise InvalidArgument(
            f"tensor '{tensor.name}': shape {tensor.shape} has a negative dimension"
        )
    if tensor.data is None:
        raise InvalidArgument(
            f"tensor '{tensor.name}': no 'data' and no parameters.binary_data_size"
        )
    flat = _flatten(tensor.data)
    expected = int(np.prod(tensor.shape)) if tensor.shape else 1
    if len(flat) != expected:
        raise InvalidArgument(
            f"tensor '{tensor.name}': shape {tensor.shape} needs {expected} elements, data holds "
            f"{len(flat)}"
        )
    try:
        if info.dtype is None:
            if not all(isinstance(v, str) for v in flat):
                raise InvalidArgument(f"tensor '{tensor.name}': BYTES data must be strings")
            array = as_bytes_array(flat, tuple(tensor.shape))
        else:
            dtype = np.float32 if tensor.datatype == "BF16" else info.dtype
            array = np.asarray(flat, dtype=dtype).reshape(tensor.shape)
            if tensor.datatype == "BF16":
                array = (array.view(np.uint32) >> 16).astype(np.uint16)
    except (TypeError, ValueError, OverflowError) as error:
        raise InvalidArgument(
            f"tensor '{tensor.name}': data does not match {tensor.datatype} ({error})"
        ) from None
    return Tensor(tensor.name, tensor.datatype, array, dict(tensor.parameters or {}))


def request_from_json(
    model: str, body: V2InferRequest, binary: dict[int, Tensor] | None = None
) -> InferRequest:
    """The codec request; `binary` holds the inputs that came as raw bytes, by position."""
    names = [t.name for t in body.inputs]
    if len(set(names)) != len(names):
        raise InvalidArgument("an input tensor name is given twice")
    binary = binary or {}
    return InferRequest(
        model_name=model,
        id=body.id or "",
        inputs=[
            binary[i] if i in binary else tensor_from_json(t) for i, t in enumerate(body.inputs)
        ],
        parameters={
            k: v for k, v in (body.parameters or {}).items() if k not in REST_ONLY_PARAMETERS
        },
        requested_outputs=[o.name for o in body.outputs or []],
    )


def json_value(array: np.ndarray, datatype: str) -> list[Any]:
    flat = array.ravel()
    if datatype == "BYTES":
        return [bytes(v).decode("utf-8", errors="replace") for v in flat]
    if datatype == "BF16":
        return (flat.astype(np.uint32) << 16).view(np.float32).tolist()
    return flat.tolist()


def response_to_json(response: InferResponse) -> V2InferResponse:
    return V2InferResponse(
        model_name=response.model_name,
        id=response.id or None,
        parameters=response.parameters or None,
        outputs=[
            V2Tensor(
                name=t.name,
                shape=list(t.shape),
                datatype=t.datatype,
                parameters=t.parameters or None,
                data=json_value(t.data, t.datatype),
            )
            for t in response.outputs
        ],
    )
