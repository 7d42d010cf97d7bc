"""A request's body: read up to the limit, and what is left drained before answering.

A client may write its whole body before it reads anything. Closing the connection with
part of that body unread makes the kernel answer with a reset, and the client never sees
the 413 (or whatever else was answered early). So before the answer goes out, what is
left of the body is read and thrown away, up to `drain_max_bytes` and `drain_timeout_s`;
a body too big even for that gets its answer with `Connection: close`.
"""

from __future__ import annotations

import asyncio

from starlette.types import Receive

from gateway.errors import HttpError

CLOSE = (b"connection", b"close")


class RequestBody:
    def __init__(
        self,
        receive: Receive,
        *,
        declared: int,  # Content-Length, -1 when none
        chunked: bool,
        drain_max_bytes: int,
        drain_timeout_s: float,
    ) -> None:
        self._receive = receive
        self._declared = declared
        self._drain_max = drain_max_bytes
        self._drain_timeout_s = drain_timeout_s
        # Whether body bytes may still be unread: none were announced, or all were read.
        self._pending = declared > 0 or chunked
        self.disconnected = False

    def _too_large(self, limit: int) -> HttpError:
        return HttpError(413, "INVALID_ARGUMENT", f"request body over {limit} bytes")

    async def read(self, limit: int) -> bytes:
        """The whole body; 413 as soon as it is known to exceed `limit`."""
        if self._declared > limit:
            raise self._too_large(limit)
        chunks: list[bytes] = []
        size = 0
        while self._pending:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                self._pending = False
                self.disconnected = True
                raise HttpError(400, "CANCELLED", "client disconnected")
            chunk = message.get("body", b"")
            self._pending = bool(message.get("more_body", False))
            if chunk:
                size += len(chunk)
                if size > limit:
                    raise self._too_large(limit)
                chunks.append(chunk)
        return b"".join(chunks)

    async def finish(self) -> list[tuple[bytes, bytes]]:
        """Drain what is left unread; the headers the answer needs (`Connection: close`
        when the rest could not be drained within the bounds)."""
        if not self._pending:
            return []
        if self._declared > self._drain_max:
            return [CLOSE]
        drained = 0
        try:
            async with asyncio.timeout(self._drain_timeout_s):
                while self._pending:
                    message = await self._receive()
                    if message["type"] == "http.disconnect":
                        self.disconnected = True
                        return [CLOSE]
                    drained += len(message.get("body", b""))
                    self._pending = bool(message.get("more_body", False))
                    if self._pending and drained > self._drain_max:
                        return [CLOSE]
        except TimeoutError:
            return [CLOSE]
        return []
