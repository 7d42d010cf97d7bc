"""Bus: streams, publish with headers, JetStream dedupe, pull round trip."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path

import pytest
from nats.js import JetStreamContext
from nats.js.api import StorageType, StreamConfig
from shop.events.v1 import envelope_pb2
from shop.user.v1 import user_pb2

from ops.natsd import NatsServer
from services.common.bus import Bus, dlq_stream_config, events_stream_config, stream_differs
from services.common.events import DLQ_STREAM, STREAM, USER_CREATED
from services.common.outbox import new_envelope
from services.common.settings import load_nats_config
from tests.support.mesh import nats_auth

pytestmark = pytest.mark.timeout(30)


async def test_streams_are_idempotent(events_bus: Bus) -> None:
    await events_bus.ensure_streams()  # second time: no error
    info = await events_bus.js.stream_info(STREAM)
    assert set(info.config.subjects or []) == {"user.>", "order.>", "payment.>", "inventory.>"}
    assert info.config.storage == StorageType.FILE
    assert info.config.duplicate_window == 120.0
    dlq = await events_bus.js.stream_info(DLQ_STREAM)
    assert dlq.config.subjects == ["dlq.>"]


async def test_publish_round_trip_with_headers_and_dedupe(events_bus: Bus) -> None:
    env = new_envelope(USER_CREATED, user_pb2.UserCreated(user=user_pb2.User(id="u1")),
                       source="user", aggregate_id="u1", correlation_id="req-1",
                       traceparent="00-abc-def-01")
    ack = await events_bus.publish(env)
    again = await events_bus.publish(env)
    assert ack.stream == STREAM and not ack.duplicate
    assert again.duplicate and again.seq == ack.seq

    sub = await events_bus.js.pull_subscribe(USER_CREATED, durable="bus-test", stream=STREAM)
    msgs = await sub.fetch(10, timeout=2)
    assert len(msgs) == 1
    msg = msgs[0]
    assert msg.headers is not None
    assert msg.headers["Nats-Msg-Id"] == env.id
    assert msg.headers["x-request-id"] == "req-1"
    assert msg.headers["traceparent"] == "00-abc-def-01"
    got = envelope_pb2.Envelope.FromString(msg.data)
    payload = user_pb2.UserCreated()
    assert got.payload.Unpack(payload) and payload.user.id == "u1"
    assert got.type == "shop.user.v1.UserCreated" and got.subject == USER_CREATED
    await msg.ack()


async def test_connect_waits_for_a_late_server(tmp_path: Path) -> None:
    """connect() retries at start: a server that comes up a moment later is found."""
    server = NatsServer(tmp_path / "nats")
    server.start()
    port = server.port
    server.stop()

    def start_late() -> None:
        time.sleep(0.5)
        server.start()

    starter = asyncio.get_running_loop().run_in_executor(None, start_late)
    try:
        bus = await Bus.connect(f"nats://127.0.0.1:{port}", name="late", connect_for_s=10,
                                auth=nats_auth())
        assert bus.nc.is_connected
        await bus.close()
    finally:
        await starter
        server.stop()


async def test_a_stream_already_right_is_not_updated(
        fresh_nats: NatsServer, monkeypatch: pytest.MonkeyPatch) -> None:
    # An update is a proposal to the whole cluster: a starting process makes none when the
    # streams already hold its settings, and one when they do not.
    updates: list[str] = []
    real_update = JetStreamContext.update_stream

    async def counted(js: JetStreamContext, config: StreamConfig | None = None,
                      **params: object) -> object:
        updates.append(str(config.name if config else params.get("name")))
        return await real_update(js, config, **params)

    monkeypatch.setattr(JetStreamContext, "update_stream", counted)
    bus = await Bus.connect(fresh_nats.url, name="updates", auth=nats_auth())
    try:
        await bus.ensure_streams()  # created
        await bus.ensure_streams()  # already right
        assert updates == []
        for wanted in (events_stream_config(bus.replicas, bus.config),
                       dlq_stream_config(bus.replicas)):
            assert wanted.name is not None
            current = (await bus.js.stream_info(wanted.name)).config
            assert not stream_differs(current, wanted), (current, wanted)
        bus.config = dataclasses.replace(bus.config, stream_max_bytes=2 * 1024**3)
        await bus.ensure_streams()
        assert updates == [STREAM]
        assert (await bus.js.stream_info(STREAM)).config.max_bytes == 2 * 1024**3
    finally:
        await bus.close()


async def test_stream_limits_are_settings_applied_on_create_and_update(
        fresh_nats: NatsServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SHOP_STREAM_MAX_AGE_S", raising=False)
    monkeypatch.delenv("SHOP_STREAM_MAX_BYTES", raising=False)
    bus = await Bus.connect(fresh_nats.url, name="limits", auth=nats_auth(),
                            config=load_nats_config())
    try:
        await bus.ensure_streams()  # created with the defaults
        info = await bus.js.stream_info(STREAM)
        assert info.config.max_age == 7 * 24 * 3600
        assert info.config.max_bytes == 1024**3
        monkeypatch.setenv("SHOP_STREAM_MAX_AGE_S", "3600")
        monkeypatch.setenv("SHOP_STREAM_MAX_BYTES", "0")  # no limit
        bus.config = load_nats_config()  # a process started with them
        await bus.ensure_streams()  # an existing stream takes the new limits
        info = await bus.js.stream_info(STREAM)
        assert info.config.max_age == 3600
        assert info.config.max_bytes == -1
        monkeypatch.setenv("SHOP_STREAM_MAX_AGE_S", "30")  # shorter than the dedupe window
        with pytest.raises(ValueError, match="SHOP_STREAM_MAX_AGE_S"):
            load_nats_config()  # such a process does not start
    finally:
        await bus.close()
