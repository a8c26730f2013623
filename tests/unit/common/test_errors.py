import grpc
import pytest

from services.common import errors

# DESIGN.md §3: condition → (error class, gRPC status, HTTP status).
TABLE = [
    (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT, 400),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND, 404),
    (errors.Unavailable, grpc.StatusCode.UNAVAILABLE, 503),
    (errors.ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED, 429),
    (errors.PayloadTooLarge, grpc.StatusCode.RESOURCE_EXHAUSTED, 413),
    (errors.DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED, 504),
    (errors.Cancelled, grpc.StatusCode.CANCELLED, 499),
    (errors.Unimplemented, grpc.StatusCode.UNIMPLEMENTED, 400),
    (errors.InternalError, grpc.StatusCode.INTERNAL, 500),
]


@pytest.mark.parametrize("cls, code, status", TABLE)
def test_every_row(cls, code, status):
    error = cls("boom") if cls is not errors.InternalError else cls()
    assert error.grpc_code == code
    assert error.http_status == status
    if cls is not errors.PayloadTooLarge:  # the one row a gRPC status alone does not name
        assert errors.from_grpc(code, "boom").http_status == status
    if status in (503, 429):
        assert error.retry_after
    back = errors.from_grpc(code, "boom")
    assert back.grpc_code == code
    if code is grpc.StatusCode.INTERNAL:
        assert back.message == errors.GENERIC_INTERNAL_MESSAGE


def test_unknown_status_is_internal():
    assert errors.from_grpc(grpc.StatusCode.DATA_LOSS, "x").http_status == 500
    assert isinstance(errors.from_grpc(grpc.StatusCode.UNKNOWN, "x"), errors.InternalError)
