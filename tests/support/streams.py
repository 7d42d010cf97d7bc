"""Reading what landed in the SHOP_EVENTS stream, for tests."""

from __future__ import annotations

import asyncio
import time

from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError
from shop.events.v1 import envelope_pb2

from services.common import events
from services.common.bus import Bus


async def events_on(bus: Bus, subject: str, *, at_least: int, settle_s: float = 1.0,
                    timeout_s: float = 15.0) -> list[envelope_pb2.Envelope]:
    """Every event on `subject` in the stream, once at least `at_least` arrived and
    nothing more came for `settle_s` (so a duplicate would be seen)."""
    deadline = time.monotonic() + timeout_s
    got: list[envelope_pb2.Envelope] = []
    await _stream_made(bus, deadline)
    sub = await bus.js.pull_subscribe(
        subject, stream=events.STREAM, config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL))
    try:
        quiet_since = time.monotonic()
        while True:
            try:
                msgs = await sub.fetch(100, timeout=0.2)
            except TimeoutError:
                msgs = []
            for m in msgs:
                got.append(envelope_pb2.Envelope.FromString(m.data))
                await m.ack()
            if msgs:
                quiet_since = time.monotonic()
            if len(got) >= at_least and time.monotonic() - quiet_since >= settle_s:
                return got
            assert time.monotonic() < deadline, f"{len(got)} {subject} events, want {at_least}"
    finally:
        await sub.unsubscribe()


async def _stream_made(bus: Bus, deadline: float) -> None:
    """A service makes the stream in the background once it serves; a test that reads
    right after the start waits for it rather than failing on "stream not found"."""
    while True:
        try:
            await bus.js.stream_info(events.STREAM)
            return
        except NotFoundError:
            assert time.monotonic() < deadline, f"no {events.STREAM} stream was made"
            await asyncio.sleep(0.05)
