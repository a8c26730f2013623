"""Stream errors both ways: `stream_error` (servicers) → `error_from_stream` (clients)."""

from __future__ import annotations

import grpc
import pytest

from services.common.converters import error_from_stream, stream_error
from services.common.errors import InternalError, InvalidArgument, NotFound, Unavailable, from_grpc
from services.common.pb import inference_pb2 as pb

REQUEST = pb.ModelInferRequest(model_name="m", id="r1")


@pytest.mark.parametrize(
    "code", [c for c in grpc.StatusCode if c is not grpc.StatusCode.OK], ids=lambda c: c.name
)
def test_every_status_survives_the_stream(code):
    error = from_grpc(code, f"detail of {code.name}")
    reply = stream_error(REQUEST, error)
    assert reply.infer_response.model_name == "m" and reply.infer_response.id == "r1"
    back = error_from_stream(reply)
    assert (type(back), back.grpc_code, back.message) == (
        type(error),
        error.grpc_code,
        error.message,
    )


@pytest.mark.parametrize(
    "text,expected",
    [
        ("model 'm' is not ready (loading)", Unavailable),
        ("the server is draining", Unavailable),
        ("unknown model 'q'", NotFound),
        ("internal error; see the service logs", InternalError),
        ("sampling parameter 'x' is not supported", InvalidArgument),
    ],
)
def test_replies_without_a_code_are_read_from_their_text(text, expected):
    assert type(error_from_stream(pb.ModelStreamInferResponse(error_message=text))) is expected


def test_a_code_wins_over_the_text():
    reply = pb.ModelStreamInferResponse(error_message="unknown model 'q'")
    reply.infer_response.parameters["error_code"].string_param = "UNAVAILABLE"
    assert isinstance(error_from_stream(reply), Unavailable)
