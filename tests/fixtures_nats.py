"""Fixtures that start a real nats-server (port 0, temp store) and always stop it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from ops.natsd import NatsServer
from services.common.bus import Bus
from services.common.events import DLQ_STREAM, STREAM
from tests.support.mesh import nats_auth

__all__ = ["events_bus", "fresh_nats", "nats_server"]


@pytest.fixture(scope="module")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """One server per test module; tests share it (use distinct durables)."""
    server = NatsServer(tmp_path_factory.mktemp("nats")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def fresh_nats(tmp_path: Path) -> Iterator[NatsServer]:
    """A server of the test's own, free to kill -9 and restart."""
    server = NatsServer(tmp_path / "nats").start()
    try:
        yield server
    finally:
        server.stop()


@pytest_asyncio.fixture
async def events_bus(nats_server: NatsServer) -> AsyncIterator[Bus]:
    """A Bus on the module's server with SHOP_EVENTS and SHOP_DLQ created and emptied."""
    bus = await Bus.connect(nats_server.url, name="test", auth=nats_auth())
    try:
        await bus.ensure_streams()
        await bus.js.purge_stream(STREAM)
        await bus.js.purge_stream(DLQ_STREAM)
        yield bus
    finally:
        await bus.close()
