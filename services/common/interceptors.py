"""Server interceptors that observe calls (tracing, metrics) without changing them.

`observed(handler, begin, end)` wraps a method handler so that `begin(context)` runs when a call
starts and `end(state, context, error)` when it ends — `error` None on success, else what the
handler raised (the error interceptor's `AbortError`, with the status in `context`, or a
cancellation). Unary and streaming handlers alike; a stream ends with its last response.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import grpc

T = TypeVar("T")

#: gRPC services that are never observed: probes and tooling, not requests.
UNOBSERVED = ("/grpc.health.v1.Health/", "/grpc.reflection.")


def observed(
    handler: Any,
    begin: Callable[[grpc.aio.ServicerContext], T],
    end: Callable[[T, grpc.aio.ServicerContext, BaseException | None], None],
) -> Any:
    if handler.unary_unary:
        inner = handler.unary_unary

        async def unary_unary(request, context):
            state = begin(context)
            try:
                reply = await inner(request, context)
            except BaseException as error:
                end(state, context, error)
                raise
            end(state, context, None)
            return reply

        return grpc.unary_unary_rpc_method_handler(
            unary_unary, handler.request_deserializer, handler.response_serializer
        )
    if handler.stream_stream or handler.unary_stream:
        streaming = handler.stream_stream or handler.unary_stream

        async def stream(request, context):
            state = begin(context)
            try:
                async for response in streaming(request, context):
                    yield response
            except BaseException as error:
                end(state, context, error)
                raise
            end(state, context, None)

        return streaming_handler(handler, stream)
    return handler


def streaming_handler(handler: Any, behaviour: Callable) -> Any:
    """A stream-stream or unary-stream handler like `handler`, answering with `behaviour`."""
    factory = (
        grpc.stream_stream_rpc_method_handler
        if handler.stream_stream
        else grpc.unary_stream_rpc_method_handler
    )
    return factory(behaviour, handler.request_deserializer, handler.response_serializer)


def aborted_code(
    context: grpc.aio.ServicerContext, error: BaseException | None
) -> grpc.StatusCode | None:
    """The status an aborted call ended with (None when `error` is not an abort)."""
    code = context.code() if isinstance(error, grpc.aio.AbortError) else None
    return code if isinstance(code, grpc.StatusCode) else None
