"""NATS on the mesh: TLS with a client certificate, and the server, not shop's code,
refuses a subject outside the identity's permissions."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator

import nats
import pytest
from nats.aio.client import Client
from nats.js.errors import NoStreamResponseError

from ops.natsd import NatsServer
from services.common.bus import Bus
from services.common.events import ORDER_CREATED, PAYMENT_COMPLETED, STREAM
from services.common.spiffe import NATS, dns_name
from tests.support.mesh import mtls_enabled, nats_auth, pki

pytestmark = pytest.mark.skipif(not mtls_enabled(), reason="needs SHOP_MTLS=on")


async def _quiet(_err: Exception) -> None:
    pass


async def _connect_fails(url: str, **options: object) -> None:
    with pytest.raises(Exception):  # noqa: B017 - nats-py raises several types
        nc = await asyncio.wait_for(nats.connect(
            url, connect_timeout=2, allow_reconnect=False, max_reconnect_attempts=0,
            error_cb=_quiet, **options), timeout=10)
        await nc.close()


async def test_a_client_without_a_certificate_is_refused(nats_server: NatsServer) -> None:
    await _connect_fails(nats_server.url)  # plaintext
    no_cert = ssl.create_default_context(cafile=str(pki() / "ca.pem"))
    await _connect_fails(nats_server.url, tls=no_cert, tls_hostname=dns_name(NATS))


class _Errors:
    def __init__(self) -> None:
        self.seen: list[str] = []
        self.event = asyncio.Event()

    async def record(self, err: Exception) -> None:
        self.seen.append(str(err))
        self.event.set()


@pytest.fixture
async def as_payment(nats_server: NatsServer) -> AsyncIterator[tuple[Client, _Errors]]:
    errors = _Errors()
    nc = await nats.connect(nats_server.url, error_cb=errors.record, allow_reconnect=False,
                            **nats_auth("payment").options())
    try:
        yield nc, errors
    finally:
        await nc.close()


async def _last_seq(url: str, subject: str) -> int:
    bus = await Bus.connect(url, name="check", auth=nats_auth())  # the test process: operator
    try:
        await bus.ensure_streams()
        info = await bus.js.stream_info(STREAM, subjects_filter=subject)
        return int((info.state.subjects or {}).get(subject, 0))
    finally:
        await bus.close()


async def test_a_service_publishes_its_own_events_and_no_one_elses(
        nats_server: NatsServer, as_payment: tuple[Client, _Errors]) -> None:
    nc, errors = as_payment
    before = await _last_seq(nats_server.url, ORDER_CREATED)
    js = nc.jetstream(timeout=2)
    ack = await js.publish(PAYMENT_COMPLETED, b"{}")
    assert ack.stream == STREAM
    with pytest.raises((TimeoutError, NoStreamResponseError, nats.errors.TimeoutError)):
        await js.publish(ORDER_CREATED, b"forged")
    await asyncio.wait_for(errors.event.wait(), 5)
    assert any("permissions violation" in e.lower() and ORDER_CREATED in e
               for e in errors.seen), errors.seen
    assert await _last_seq(nats_server.url, ORDER_CREATED) == before  # nothing stored


async def test_a_service_cannot_listen_to_subjects(
        as_payment: tuple[Client, _Errors]) -> None:
    nc, errors = as_payment
    await nc.subscribe("order.>")
    await nc.flush()
    await asyncio.wait_for(errors.event.wait(), 5)
    assert any("permissions violation" in e.lower() and "subscription" in e.lower()
               for e in errors.seen), errors.seen
