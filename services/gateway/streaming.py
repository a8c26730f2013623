"""Client-disconnect handling: a gone client cancels the work (and so the gRPC
calls, and so the engine's generation).

`EventStreamResponse` always listens for `http.disconnect` beside the stream
(whatever the server's ASGI spec version) and closes the body iterator
explicitly; `cancel_on_disconnect` does the same for a non-streamed answer.
Both do the work in the request's own task, which a listener task cancels on
a disconnect.

A stream that fails after its 200 was sent (an engine lost mid-generation, the
deadline passing) ends with an OpenAI error event and `[DONE]`, never silently.

A body iterator may mark its closing write as a `LastChunk`: it is sent as the
end of the response body (one write instead of two), and the iterator is then
run to its end without writing, so its bookkeeping after the last event still
happens.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import TypeVar

from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from services.common.errors import Cancelled
from services.gateway.errors import stream_error_event

logger = logging.getLogger(__name__)

T = TypeVar("T")


async def _wait_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


class LastChunk(bytes):
    """The final bytes of an event stream."""


class _DisconnectWatch:
    """Cancels the current task when the client disconnects; the task itself does the
    work (no extra task per request, so no extra event-loop turn before the first byte)."""

    def __init__(self, receive: Receive) -> None:
        task = asyncio.current_task()
        assert task is not None, "a disconnect watch runs inside the request's task"
        self.task = task
        self.disconnected = False
        self.closed = False
        self.listener = asyncio.ensure_future(_wait_disconnect(receive))
        self.listener.add_done_callback(self._on_done)

    def _on_done(self, listener: asyncio.Future) -> None:
        if self.closed or listener.cancelled() or listener.exception() is not None:
            return
        self.disconnected = True
        self.task.cancel()

    def caught(self) -> bool:
        """In an `except CancelledError`: True when the cancellation was this watch's."""
        if self.disconnected and self.task.cancelling():
            self.task.uncancel()
            return True
        return False

    async def close(self) -> None:
        self.closed = True
        self.listener.cancel()
        await asyncio.gather(self.listener, return_exceptions=True)


class EventStreamResponse(StreamingResponse):
    def __init__(self, content, **kwargs) -> None:
        headers = {
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
            **kwargs.pop("headers", {}),
        }
        super().__init__(content, media_type="text/event-stream", headers=headers, **kwargs)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        watch = _DisconnectWatch(receive)
        ended = False
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": self.status_code,
                    "headers": self.raw_headers,
                }
            )
            try:
                async for chunk in self.body_iterator:
                    if ended:
                        continue  # the iterator's own ending (bookkeeping after its last event)
                    last = isinstance(chunk, LastChunk)
                    await send({"type": "http.response.body", "body": chunk, "more_body": not last})
                    if last:
                        ended = True
                        # the response is complete: a disconnect now is the normal end
                        await watch.close()
            except (asyncio.CancelledError, OSError):
                raise
            except Exception as error:  # noqa: BLE001 - a failed stream ends with an error event
                if ended:
                    raise
                ended = True
                await send(
                    {
                        "type": "http.response.body",
                        "body": stream_error_event(error),
                        "more_body": False,
                    }
                )
            if not ended:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not watch.caught():
                raise
            logger.info("client disconnected; cancelling the stream")
        except OSError:
            logger.info("client went away while streaming")
        finally:
            await watch.close()
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                await aclose()


async def cancel_on_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Run `work`; if the client disconnects first, cancel it and raise `Cancelled`."""
    watch = _DisconnectWatch(request.receive)
    try:
        return await work
    except asyncio.CancelledError:
        if watch.caught():
            raise Cancelled("the client closed the request") from None
        raise
    finally:
        await watch.close()
