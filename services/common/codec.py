"""Tensor codec: OIP v2 tensor data ↔ numpy, in both wire forms.

A tensor travels either in typed `contents` fields or as little-endian bytes in
`raw_input_contents` / `raw_output_contents` (BYTES elements as a 4-byte
little-endian length followed by the bytes). FP16 and BF16 travel raw only.
Every malformed tensor raises `InvalidArgument` naming the tensor.

BYTES tensors are numpy object arrays of `bytes`. BF16 tensors are numpy
`uint16` arrays holding the raw bfloat16 bits (numpy has no bfloat16).

`parse_bool` is the one reading of a boolean option (request parameters and
flag tensors) for every service: a client's `"false"` is false everywhere.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from services.common.errors import InvalidArgument


@dataclass(frozen=True)
class DatatypeInfo:
    dtype: np.dtype | None  # None: BYTES
    contents_field: str | None  # None: raw only


DATATYPES: dict[str, DatatypeInfo] = {
    "BOOL": DatatypeInfo(np.dtype(np.bool_), "bool_contents"),
    "UINT8": DatatypeInfo(np.dtype("<u1"), "uint_contents"),
    "UINT16": DatatypeInfo(np.dtype("<u2"), "uint_contents"),
    "UINT32": DatatypeInfo(np.dtype("<u4"), "uint_contents"),
    "UINT64": DatatypeInfo(np.dtype("<u8"), "uint64_contents"),
    "INT8": DatatypeInfo(np.dtype("<i1"), "int_contents"),
    "INT16": DatatypeInfo(np.dtype("<i2"), "int_contents"),
    "INT32": DatatypeInfo(np.dtype("<i4"), "int_contents"),
    "INT64": DatatypeInfo(np.dtype("<i8"), "int64_contents"),
    "FP16": DatatypeInfo(np.dtype("<f2"), None),
    "BF16": DatatypeInfo(np.dtype("<u2"), None),
    "FP32": DatatypeInfo(np.dtype("<f4"), "fp32_contents"),
    "FP64": DatatypeInfo(np.dtype("<f8"), "fp64_contents"),
    "BYTES": DatatypeInfo(None, "bytes_contents"),
}

_NUMPY_TO_DATATYPE = {
    np.dtype(np.bool_): "BOOL",
    np.dtype(np.uint8): "UINT8",
    np.dtype(np.uint16): "UINT16",
    np.dtype(np.uint32): "UINT32",
    np.dtype(np.uint64): "UINT64",
    np.dtype(np.int8): "INT8",
    np.dtype(np.int16): "INT16",
    np.dtype(np.int32): "INT32",
    np.dtype(np.int64): "INT64",
    np.dtype(np.float16): "FP16",
    np.dtype(np.float32): "FP32",
    np.dtype(np.float64): "FP64",
}

_LENGTH = struct.Struct("<I")


@dataclass
class Tensor:
    """A named tensor. `parameters` are the tensor's OIP parameters."""

    name: str
    datatype: str
    data: np.ndarray
    parameters: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)


def datatype_of(array: np.ndarray) -> str:
    """The OIP datatype of a numpy array (object arrays are BYTES)."""
    if array.dtype == object or array.dtype.kind in ("S", "U"):
        return "BYTES"
    try:
        return _NUMPY_TO_DATATYPE[array.dtype.newbyteorder("=")]
    except KeyError:
        raise InvalidArgument(f"numpy dtype {array.dtype} has no OIP v2 datatype") from None


def utf8(text: str) -> bytes:
    """`text` as UTF-8; a lone surrogate (JSON allows `"\\ud800"`, UTF-8 has no form of it) is
    refused as bad input."""
    try:
        return text.encode()
    except UnicodeEncodeError as error:
        raise InvalidArgument(
            f"a text holds a lone surrogate (position {error.start}), which is not valid Unicode"
        ) from None


def as_bytes_array(values: Any, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """An object array of `bytes` (str items are UTF-8 encoded)."""
    flat = [
        utf8(v) if isinstance(v, str) else bytes(v)
        for v in np.asarray(values, dtype=object).ravel()
    ]
    out = np.empty(len(flat), dtype=object)
    out[:] = flat
    return out.reshape(shape if shape is not None else np.shape(values))


def _checked_shape(name: str, shape: Any) -> tuple[int, ...]:
    dims = tuple(int(d) for d in shape)
    if any(d < 0 for d in dims):
        raise InvalidArgument(f"tensor '{name}': shape {list(dims)} has a negative dimension")
    return dims


def _element_count(name: str, dims: tuple[int, ...]) -> int:
    count = 1
    for d in dims:
        count *= d
        if count > 2**40:
            raise InvalidArgument(f"tensor '{name}': shape {list(dims)} is too large")
    return count


def _info(name: str, datatype: str) -> DatatypeInfo:
    info = DATATYPES.get(datatype)
    if info is None:
        raise InvalidArgument(
            f"tensor '{name}': unknown datatype '{datatype}' (expected one of "
            f"{', '.join(DATATYPES)})"
        )
    return info


def decode_raw(name: str, datatype: str, shape: Any, raw: bytes) -> Tensor:
    """A tensor from its raw little-endian bytes."""
    info = _info(name, datatype)
    dims = _checked_shape(name, shape)
    count = _element_count(name, dims)
    if info.dtype is None:
        items = split_bytes(name, raw)
        if len(items) != count:
            raise InvalidArgument(
                f"tensor '{name}': shape {list(dims)} needs {count} BYTES elements, raw data holds "
                f"{len(items)}"
            )
        return Tensor(name, datatype, as_bytes_array(items, dims))
    expected = count * info.dtype.itemsize
    if len(raw) != expected:
        raise InvalidArgument(
            f"tensor '{name}': {datatype} shape {list(dims)} needs {expected} raw bytes, got "
            f"{len(raw)}"
        )
    return Tensor(name, datatype, np.frombuffer(raw, dtype=info.dtype).reshape(dims))


def split_bytes(name: str, raw: bytes) -> list[bytes]:
    """The elements of a raw BYTES tensor (each a 4-byte little-endian length, then the bytes)."""
    items: list[bytes] = []
    offset, end = 0, len(raw)
    while offset < end:
        if offset + 4 > end:
            raise InvalidArgument(
                f"tensor '{name}': truncated BYTES length prefix at offset {offset}"
            )
        (length,) = _LENGTH.unpack_from(raw, offset)
        offset += 4
        if offset + length > end:
            raise InvalidArgument(
                f"tensor '{name}': BYTES element at offset {offset - 4} claims {length} bytes, "
                f"only {end - offset} remain"
            )
        items.append(bytes(raw[offset : offset + length]))
        offset += length
    return items


def decode_contents(name: str, datatype: str, shape: Any, contents: Any) -> Tensor:
    """A tensor from typed `InferTensorContents` (any object with the repeated fields)."""
    info = _info(name, datatype)
    dims = _checked_shape(name, shape)
    count = _element_count(name, dims)
    if info.contents_field is None:
        raise InvalidArgument(f"tensor '{name}': {datatype} data must be sent in raw form")
    values = getattr(contents, info.contents_field)
    if len(values) != count:
        raise InvalidArgument(
            f"tensor '{name}': shape {list(dims)} needs {count} elements, "
            f"{info.contents_field} holds {len(values)}"
        )
    _reject_other_fields(name, info.contents_field, contents)
    if info.dtype is None:
        return Tensor(name, datatype, as_bytes_array(list(values), dims))
    array = np.asarray(values)
    if info.dtype.kind in "iu" and array.size:
        bounds = np.iinfo(info.dtype)
        if array.min() < bounds.min or array.max() > bounds.max:
            raise InvalidArgument(f"tensor '{name}': value out of range for {datatype}")
    return Tensor(name, datatype, array.astype(info.dtype).reshape(dims))


def _reject_other_fields(name: str, used: str, contents: Any) -> None:
    for info in DATATYPES.values():
        other = info.contents_field
        if other and other != used and len(getattr(contents, other)):
            raise InvalidArgument(f"tensor '{name}': data in {other} does not match its datatype")


def encode_raw(tensor: Tensor) -> bytes:
    """Raw little-endian bytes of a tensor."""
    if tensor.datatype == "BYTES":
        parts: list[bytes] = []
        for item in tensor.data.ravel():
            data = utf8(item) if isinstance(item, str) else bytes(item)
            parts.append(_LENGTH.pack(len(data)))
            parts.append(data)
        return b"".join(parts)
    dtype = _info(tensor.name, tensor.datatype).dtype
    return np.ascontiguousarray(tensor.data, dtype=dtype).tobytes()


def contents_values(tensor: Tensor) -> tuple[str, list[Any]]:
    """(`InferTensorContents` field, values) for the typed form."""
    info = _info(tensor.name, tensor.datatype)
    if info.contents_field is None:
        raise InvalidArgument(f"tensor '{tensor.name}': {tensor.datatype} can only be returned raw")
    flat = tensor.data.ravel()
    if info.dtype is None:
        return info.contents_field, [utf8(v) if isinstance(v, str) else bytes(v) for v in flat]
    return info.contents_field, flat.tolist()


_BOOL_STRINGS = {"true": True, "false": False, "1": True, "0": False}


def parse_bool(name: str, value: object) -> bool:
    """A boolean option as OIP clients send it: a bool, 0/1, or "true"/"false"/"1"/"0"
    (any case). Anything else is refused, naming the option, rather than guessed."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)) and value in (0, 1):
        return bool(value)
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if isinstance(value, str) and value.lower() in _BOOL_STRINGS:
        return _BOOL_STRINGS[value.lower()]
    raise InvalidArgument(f"parameter '{name}': expected a boolean (true/false/1/0), got {value!r}")


@dataclass
class InferRequest:
    """A decoded `ModelInferRequest`. `raw` records the form the inputs used."""

    model_name: str
    inputs: list[Tensor]
    id: str = ""
    model_version: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)
    requested_outputs: list[str] = field(default_factory=list)
    raw: bool = False

    def input(self, name: str) -> Tensor | None:
        for tensor in self.inputs:
            if tensor.name == name:
                return tensor
        return None


@dataclass
class InferResponse:
    """A `ModelInferResponse` before encoding."""

    model_name: str
    outputs: list[Tensor]
    id: str = ""
    model_version: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)
