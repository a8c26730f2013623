"""One error hierarchy for every service: the status table of DESIGN.md §3.

Each error class carries its gRPC status and HTTP status; `from_grpc` maps a
gRPC status back to its class (anything else is a bug: 500). Only the gRPC
server interceptor (`services.common.server`) and the gateway's exception
handlers translate errors into wire statuses.
"""

from __future__ import annotations

import grpc

GENERIC_INTERNAL_MESSAGE = "internal error; see the service logs"


class HfmeshError(Exception):
    """Base class; `message` is safe to show to clients."""

    grpc_code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    http_status: int = 500
    #: Seconds a client should wait before retrying (503/429 answers).
    retry_after: float | None = None
    #: The request field at fault, where one is (the OpenAI error envelope's `param`).
    param: str | None = None

    def __init__(
        self, message: str, *, retry_after: float | None = None, param: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        if retry_after is not None:
            self.retry_after = retry_after
        self.param = param


class InvalidArgument(HfmeshError):
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT
    http_status = 400


class NotFound(HfmeshError):
    grpc_code = grpc.StatusCode.NOT_FOUND
    http_status = 404


class Unavailable(HfmeshError):
    """Model loading, not ready, the service draining, or overloaded (queue full)."""

    grpc_code = grpc.StatusCode.UNAVAILABLE
    http_status = 503
    retry_after = 1.0


class ResourceExhausted(HfmeshError):
    """A tenant over its rate or token limit."""

    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    http_status = 429
    retry_after: float | None = 1.0


class PayloadTooLarge(ResourceExhausted):
    """A request body over the size limit."""

    http_status = 413
    retry_after = None


class DeadlineExceeded(HfmeshError):
    grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED
    http_status = 504


class Cancelled(HfmeshError):
    grpc_code = grpc.StatusCode.CANCELLED
    http_status = 499


class Unimplemented(HfmeshError):
    """The operation does not exist for this model or task."""

    grpc_code = grpc.StatusCode.UNIMPLEMENTED
    http_status = 400


class InternalError(HfmeshError):
    """A bug. Clients only ever see the generic message."""

    def __init__(self, message: str = GENERIC_INTERNAL_MESSAGE) -> None:
        super().__init__(message)


_BY_CODE: dict[grpc.StatusCode, type[HfmeshError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.CANCELLED: Cancelled,
    grpc.StatusCode.UNIMPLEMENTED: Unimplemented,
}


def from_grpc(code: grpc.StatusCode, details: str | None) -> HfmeshError:
    """The error a failed downstream RPC means to our own callers. gRPC's own refusal of a
    message over a hop's size limit ("... message larger than max ...") is a
    `PayloadTooLarge` (413), not a rate limit."""
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in (details or ""):
        return PayloadTooLarge(
            f"a message between services exceeds the gRPC size limit ({details}); send less "
            "per request"
        )
    cls = _BY_CODE.get(code)
    if cls is None:
        return InternalError()
    return cls(details or code.name.lower())


def from_rpc_error(error: grpc.RpcError) -> HfmeshError:
    return from_grpc(error.code(), error.details())
