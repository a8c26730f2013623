"""Client-disconnect handling: a gone client cancels the work (and so the gRPC
calls, and so the engine's generation).

`EventStreamResponse` always listens for `http.disconnect` beside the stream
(whatever the server's ASGI spec version) and closes the body iterator
explicitly; `cancel_on_disconnect` does the same for a non-streamed answer.

A body iterator may mark its closing write as a `LastChunk`: it is sent as the
end of the response body (one write instead of two), and the iterator is then
run to its end without writing, so its bookkeeping after the last event still
happens.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, TypeVar

from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from services.common.errors import Cancelled

logger = logging.getLogger(__name__)

T = TypeVar("T")


async def _wait_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


class LastChunk(bytes):
    """The final bytes of an event stream."""


class EventStreamResponse(StreamingResponse):
    def __init__(self, content, **kwargs) -> None:
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **kwargs.pop("headers", {})}
        super().__init__(content, media_type="text/event-stream", headers=headers, **kwargs)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ended = False

        async def stream() -> None:
            nonlocal ended
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            async for chunk in self.body_iterator:
                if ended:
                    continue
                last = isinstance(chunk, LastChunk)
                await send({"type": "http.response.body", "body": chunk, "more_body": not last})
                ended = last
            if not ended:
                await send({"type": "http.response.body", "body": b"", "more_body": False})

        writer = asyncio.ensure_future(stream())
        listener = asyncio.ensure_future(_wait_disconnect(receive))
        try:
            done, _ = await asyncio.wait({writer, listener}, return_when=asyncio.FIRST_COMPLETED)
            if writer not in done and ended:
                # The response is complete (so the server reports a disconnect); the
                # iterator only has its own ending left to run.
                await asyncio.wait({writer})
                done = {writer}
            if writer in done:
                try:
                    writer.result()
                except OSError:
                    logger.info("client went away while streaming")
            else:
                logger.info("client disconnected; cancelling the stream")
        finally:
            for task in (writer, listener):
                task.cancel()
            await asyncio.gather(writer, listener, return_exceptions=True)
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                await aclose()


async def cancel_on_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Run `work`; if the client disconnects first, cancel it and raise `Cancelled`."""
    task = asyncio.ensure_future(work)
    listener = asyncio.ensure_future(_wait_disconnect(request.receive))
    try:
        done, _ = await asyncio.wait({task, listener}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        listener.cancel()
        raise
    if task in done:
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)
        return task.result()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    raise Cancelled("the client closed the request")
