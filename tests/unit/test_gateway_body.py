"""RequestBody: the limit, and the bounds on draining what an early answer left unread."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.body import CLOSE, RequestBody
from gateway.errors import HttpError


class Feed:
    """An ASGI receive that hands out `chunks` (then waits, or says disconnected)."""

    def __init__(self, chunks: list[bytes], *, hang: bool = False) -> None:
        self.chunks = list(chunks)
        self.hang = hang
        self.taken = 0

    async def __call__(self) -> dict[str, Any]:
        if not self.chunks:
            if self.hang:
                await asyncio.sleep(3600)
            return {"type": "http.disconnect"}
        chunk = self.chunks.pop(0)
        self.taken += 1
        return {"type": "http.request", "body": chunk, "more_body": bool(self.chunks) or self.hang}


def _body(feed: Feed, *, declared: int = -1, chunked: bool = True,
          drain_max: int = 1000, timeout_s: float = 5.0) -> RequestBody:
    return RequestBody(feed, declared=declared, chunked=chunked,
                       drain_max_bytes=drain_max, drain_timeout_s=timeout_s)


async def test_a_body_within_the_limit_is_read_whole_and_nothing_is_left() -> None:
    feed = Feed([b'{"a":', b"1}"])
    body = _body(feed)
    assert await body.read(100) == b'{"a":1}'
    assert await body.finish() == []


async def test_over_the_limit_is_413_and_the_rest_is_drained() -> None:
    feed = Feed([b"x" * 60, b"x" * 60, b"x" * 60])
    body = _body(feed)
    with pytest.raises(HttpError) as info:
        await body.read(100)
    assert info.value.http_status == 413
    assert await body.finish() == []  # drained: the connection can stay open
    assert feed.taken == 3


async def test_a_declared_size_over_the_limit_is_413_before_reading() -> None:
    feed = Feed([b"x" * 500])
    body = _body(feed, declared=500, chunked=False)
    with pytest.raises(HttpError):
        await body.read(100)
    assert feed.taken == 0
    assert await body.finish() == []
    assert feed.taken == 1


async def test_more_than_the_drain_bound_closes_the_connection() -> None:
    assert await _body(Feed([b"x"]), declared=5000, chunked=False).finish() == [CLOSE]
    feed = Feed([b"x" * 600, b"x" * 600, b"x" * 600])
    assert await _body(feed, drain_max=1000).finish() == [CLOSE]
    assert feed.taken == 2  # stopped reading once past the bound


async def test_a_client_that_stops_sending_is_not_waited_for_long() -> None:
    feed = Feed([b"x" * 10], hang=True)
    assert await _body(feed, timeout_s=0.2).finish() == [CLOSE]


async def test_no_body_announced_nothing_to_drain() -> None:
    feed = Feed([b""])
    assert await _body(feed, declared=-1, chunked=False).finish() == []
    assert feed.taken == 0
