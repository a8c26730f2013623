import numpy as np
import pytest

from services.common.codec import (
    InferRequest,
    InferResponse,
    Tensor,
    as_bytes_array,
    decode_raw,
    encode_raw,
)
from services.common.converters import (
    infer_request_from_pb,
    infer_request_to_pb,
    infer_response_from_pb,
    infer_response_to_pb,
)
from services.common.errors import InvalidArgument
from services.common.pb import inference_pb2 as pb

ARRAYS = [
    Tensor("b", "BOOL", np.array([True, False])),
    Tensor("u8", "UINT8", np.array([[1, 255]], dtype=np.uint8)),
    Tensor("i32", "INT32", np.array([-5, 7], dtype=np.int32)),
    Tensor("i64", "INT64", np.arange(6, dtype=np.int64).reshape(2, 3)),
    Tensor("f32", "FP32", np.array([0.5, -1.25], dtype=np.float32)),
    Tensor("f64", "FP64", np.array([1e-300], dtype=np.float64)),
    Tensor("s", "BYTES", as_bytes_array(["héllo", "", "x" * 300])),
]


@pytest.mark.parametrize("raw", [True, False])
def test_round_trip_every_form(raw):
    request = InferRequest("m", ARRAYS, id="r1", parameters={"a": 1, "b": True, "c": "x", "d": 0.5})
    back = infer_request_from_pb(infer_request_to_pb(request, raw=raw))
    assert back.raw is raw and back.id == "r1"
    assert back.parameters == {"a": 1, "b": True, "c": "x", "d": 0.5}
    for sent, got in zip(ARRAYS, back.inputs, strict=True):
        assert got.datatype == sent.datatype and got.shape == sent.shape
        assert got.data.tolist() == sent.data.tolist()


def test_response_answers_in_request_form():
    response = InferResponse("m", [Tensor("y", "FP32", np.ones((2, 2), np.float32))])
    raw = infer_response_to_pb(response, raw=True)
    typed = infer_response_to_pb(response, raw=False)
    assert len(raw.raw_output_contents) == 1 and not raw.outputs[0].HasField("contents")
    assert (
        not typed.raw_output_contents and list(typed.outputs[0].contents.fp32_contents) == [1.0] * 4
    )
    assert infer_response_from_pb(raw).outputs[0].data.tolist() == [[1.0, 1.0], [1.0, 1.0]]


def test_fp16_is_raw_only():
    tensor = Tensor("h", "FP16", np.array([1.5], dtype=np.float16))
    assert decode_raw("h", "FP16", [1], encode_raw(tensor)).data.tolist() == [1.5]
    message = pb.ModelInferRequest(model_name="m")
    message.inputs.add(name="h", datatype="FP16", shape=[1])
    with pytest.raises(InvalidArgument, match="'h'.*raw"):
        infer_request_from_pb(message)


def _message(datatype, shape, **contents):
    message = pb.ModelInferRequest(model_name="m")
    entry = message.inputs.add(name="x", datatype=datatype, shape=shape)
    for key, values in contents.items():
        getattr(entry.contents, key).extend(values)
    return message


@pytest.mark.parametrize(
    "message, match",
    [
        (_message("INT64", [3], int64_contents=[1, 2]), "'x'.*needs 3 elements"),
        (_message("INT64", [2], fp32_contents=[1.0, 2.0]), "'x'.*needs 2 elements"),
        (_message("FP32", [1], fp32_contents=[1.0], int64_contents=[1]), "'x'.*int64_contents"),
        (_message("INT8", [1], int_contents=[300]), "'x'.*out of range"),
        (_message("FOO", [1]), "'x'.*unknown datatype"),
        (_message("INT64", [-1], int64_contents=[]), "'x'.*negative"),
    ],
)
def test_malformed_contents_name_the_tensor(message, match):
    with pytest.raises(InvalidArgument, match=match):
        infer_request_from_pb(message)


def test_malformed_raw():
    message = pb.ModelInferRequest(model_name="m")
    message.inputs.add(name="t", datatype="INT64", shape=[2])
    message.raw_input_contents.append(b"\x00" * 12)
    with pytest.raises(InvalidArgument, match="'t'.*16 raw bytes, got 12"):
        infer_request_from_pb(message)
    message = pb.ModelInferRequest(model_name="m")
    message.inputs.add(name="s", datatype="BYTES", shape=[1])
    message.raw_input_contents.append(b"\x10\x00\x00\x00abc")
    with pytest.raises(InvalidArgument, match="'s'.*claims 16 bytes"):
        infer_request_from_pb(message)
    message.raw_input_contents[0] = b"\x01\x00"
    with pytest.raises(InvalidArgument, match="'s'.*truncated"):
        infer_request_from_pb(message)


def test_both_forms_rejected():
    message = _message("INT64", [1], int64_contents=[1])
    message.raw_input_contents.append(b"\x00" * 8)
    with pytest.raises(InvalidArgument, match="'x'.*both"):
        infer_request_from_pb(message)


@pytest.mark.parametrize(
    "value,expected",
    [
        (True, True),
        (False, False),
        (1, True),
        (0, False),
        (np.bool_(True), True),
        (np.int64(0), False),
        ("true", True),
        ("FALSE", False),
        ("1", True),
        ("0", False),
        ("True", True),
        (b"false", False),
    ],
)
def test_parse_bool_reads_what_clients_send(value, expected):
    from services.common.codec import parse_bool

    assert parse_bool("flag", value) is expected


@pytest.mark.parametrize("value", ["yes", "", 2, -1, 0.5, None, [True]])
def test_parse_bool_refuses_the_rest_naming_the_parameter(value):
    from services.common.codec import parse_bool

    with pytest.raises(InvalidArgument, match="'flag'"):
        parse_bool("flag", value)
