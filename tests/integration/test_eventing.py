"""The event side of a service in the background (services.common.eventing) and the
outbox relay lease: one active relay per SQLite file.

Also a relay worker for the lease tests: `python -m tests.integration.test_eventing
DB_PATH NATS_URL OWNER LEASE_S` prints "ready", "active" once it holds the lease, and
"stats <published> <leases>" after SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from nats.js.api import ConsumerConfig, DeliverPolicy
from shop.events.v1 import envelope_pb2
from shop.payment.v1 import payment_pb2 as pb
from shop.payment.v1 import payment_pb2_grpc

from ops.natsd import NatsServer
from services.common import events
from services.common.bus import Bus
from services.common.db import Database
from services.common.events import STREAM
from services.common.outbox import MARK_EVERY_S, OutboxRelay
from services.common.spiffe import OPERATOR
from tests.fixtures_services import ServiceFactory
from tests.support import mesh
from tests.support.mesh import nats_auth
from tests.support.outboxes import fill_outbox, unsent_outbox_rows

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]
N_EVENTS = 300


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- a service starts and serves with NATS down -------------------------------------


@pytest.fixture
def dead_nats(tmp_path: Path) -> Iterator[NatsServer]:
    """A NATS server object on a known port, not started: the test starts it later."""
    server = NatsServer(tmp_path / "nats", port=_free_port())
    try:
        yield server
    finally:
        server.stop()


async def _wait_event(url: str, subject: str, timeout_s: float = 30.0
                      ) -> list[envelope_pb2.Envelope]:
    bus = await Bus.connect(url, name="eventing-test", auth=nats_auth())
    try:
        deadline = time.monotonic() + timeout_s
        while True:  # the stream appears once the service's event side connected
            try:
                await bus.js.stream_info(STREAM)
                break
            except Exception:
                assert time.monotonic() < deadline, "the service never created the stream"
                await asyncio.sleep(0.1)
        sub = await bus.js.pull_subscribe(
            subject, stream=STREAM, config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL))
        try:
            while True:
                try:
                    msgs = await sub.fetch(10, timeout=0.5)
                except TimeoutError:
                    msgs = []
                if msgs:
                    return [envelope_pb2.Envelope.FromString(m.data) for m in msgs]
                assert time.monotonic() < deadline, f"no {subject} after NATS came up"
        finally:
            await sub.unsubscribe()
    finally:
        await bus.close()


async def test_payment_serves_with_nats_down_and_publishes_once_it_is_up(
        data_dir: Path, dead_nats: NatsServer) -> None:
    services = ServiceFactory(data_dir, f"nats://127.0.0.1:{dead_nats.port}")
    try:
        proc = await asyncio.to_thread(services.start, "payment", timeout=30.0)
        async with mesh.channel(proc.addr) as channel:
            stub = payment_pb2_grpc.PaymentServiceStub(channel)
            got = await stub.Charge(pb.ChargeRequest(
                order_id="o-nats-down", user_id="u1", amount_cents=1200, currency="USD",
                card_token="tok_visa"), timeout=10)
            assert got.payment.status == pb.PAYMENT_STATUS_CHARGED
        with sqlite3.connect(data_dir / "payment.db") as conn:
            waiting = conn.execute("SELECT count(*) FROM outbox WHERE sent_at IS NULL"
                                   ).fetchone()[0]
        assert waiting == 1, "the event should wait in the outbox while NATS is down"
        await asyncio.to_thread(dead_nats.start)
        envs = await _wait_event(dead_nats.url, events.PAYMENT_COMPLETED)
        assert [e.aggregate_id for e in envs] == ["o-nats-down"]
        assert envs[0].source == "payment"
    finally:
        await asyncio.to_thread(services.stop_all)


# -- the relay lease ----------------------------------------------------------------


async def _stream(url: str) -> list[envelope_pb2.Envelope]:
    bus = await Bus.connect(url, name="check", auth=nats_auth())
    try:
        info = await bus.js.stream_info(STREAM)
        envs = []
        if info.state.messages:
            for seq in range(info.state.first_seq, info.state.last_seq + 1):
                raw = await bus.js.get_msg(STREAM, seq=seq)
                envs.append(envelope_pb2.Envelope.FromString(raw.data or b""))
        return envs
    finally:
        await bus.close()


def _assert_stream(envs: list[envelope_pb2.Envelope],
                   expected: list[tuple[str, str]]) -> None:
    assert len(envs) == len(expected), "a duplicate or a loss in the stream"
    assert {e.id for e in envs} == {eid for eid, _ in expected}
    for agg in {a for _, a in expected}:
        want = [eid for eid, a in expected if a == agg]
        assert [e.id for e in envs if e.aggregate_id == agg] == want, f"order broken: {agg}"


@pytest.fixture
async def two_buses(fresh_nats: NatsServer) -> AsyncIterator[tuple[Bus, Bus]]:
    a = await Bus.connect(fresh_nats.url, name="relay-a", auth=nats_auth())
    b = await Bus.connect(fresh_nats.url, name="relay-b", auth=nats_auth())
    try:
        await a.ensure_streams()
        yield a, b
    finally:
        await a.close()
        await b.close()


async def test_two_relays_on_one_file_publish_each_event_once(
        tmp_path: Path, fresh_nats: NatsServer, two_buses: tuple[Bus, Bus]) -> None:
    db_path = tmp_path / "payment.db"
    expected = await fill_outbox(db_path, N_EVENTS)
    dbs = [await Database.open(db_path, durable=False) for _ in range(2)]
    relays = [OutboxRelay(db, bus, batch=16, poll_s=0.05, owner=f"payment-{i + 1}",
                          lease_s=1.0)
              for i, (db, bus) in enumerate(zip(dbs, two_buses, strict=True))]
    tasks = [asyncio.create_task(r.run()) for r in relays]
    try:
        deadline = time.monotonic() + 30
        while unsent_outbox_rows(db_path):
            assert time.monotonic() < deadline, "outbox did not drain"
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.5)  # past a lease period: a second publisher would show
        assert sum(r.active for r in relays) == 1
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        for db in dbs:
            await db.close()
    published = [r.stats.published for r in relays]
    assert sum(published) == N_EVENTS, published
    assert sorted(published) == [0, N_EVENTS], "only the lease holder publishes"
    _assert_stream(await _stream(fresh_nats.url), expected)
    # Stopped relays hand the lease back.
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("SELECT count(*) FROM outbox_lease").fetchone()[0] == 0


class _Worker:
    def __init__(self, db_path: Path, url: str, owner: str, lease_s: float) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.integration.test_eventing", str(db_path), url,
             owner, str(lease_s)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
        assert self.expect() == "ready"

    def expect(self) -> str:
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().strip()

    def stats(self) -> dict[str, int]:
        """SIGTERM, then its final stats."""
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(20) == 0
        assert self.proc.stdout is not None
        lines = [ln for ln in self.proc.stdout.read().splitlines() if ln.startswith("stats ")]
        return dict(json.loads(lines[-1][len("stats "):]))

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGCONT)
                self.proc.kill()
        self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def _wait_drained(db_path: Path, timeout_s: float) -> float:
    t0 = time.monotonic()
    while unsent_outbox_rows(db_path):
        assert time.monotonic() - t0 < timeout_s, "outbox did not drain"
        time.sleep(0.02)
    return time.monotonic() - t0


def test_kill_9_of_the_active_relay_hands_over_at_once(
        tmp_path: Path, fresh_nats: NatsServer) -> None:
    """The holder is a dead process of this machine: the standby need not wait out the
    (here 60 s) lease."""
    db_path = tmp_path / "payment.db"
    expected = asyncio.run(fill_outbox(db_path, N_EVENTS))
    workers: list[_Worker] = []
    try:
        a = _Worker(db_path, fresh_nats.url, "payment-1", 60.0)
        workers.append(a)
        assert a.expect() == "active"
        b = _Worker(db_path, fresh_nats.url, "payment-2", 60.0)
        workers.append(b)
        time.sleep(0.3)
        remaining = unsent_outbox_rows(db_path)
        assert 0 < remaining < N_EVENTS, f"kill should land mid-drain ({remaining} left)"
        a.proc.kill()
        a.proc.wait()
        assert _wait_drained(db_path, 15.0) < 15.0
        assert b.expect() == "active"
        b_stats = b.stats()
        assert b_stats["leases"] == 1
        # b published what a had not marked sent (a's last batch may be in both).
        assert remaining <= b_stats["published"] <= remaining + 5
    finally:
        for w in workers:
            w.close()
    _assert_stream(asyncio.run(_stream(fresh_nats.url)), expected)


def test_frozen_relay_loses_the_lease_after_expiry_and_stays_standby(
        tmp_path: Path, fresh_nats: NatsServer) -> None:
    """SIGSTOP: the holder looks alive, so the standby waits for the expiry; once thawed
    the old holder finds its lease gone and publishes nothing more."""
    db_path = tmp_path / "payment.db"
    expected = asyncio.run(fill_outbox(db_path, N_EVENTS))
    workers: list[_Worker] = []
    try:
        a = _Worker(db_path, fresh_nats.url, "payment-1", 1.0)
        workers.append(a)
        assert a.expect() == "active"
        b = _Worker(db_path, fresh_nats.url, "payment-2", 1.0)
        workers.append(b)
        time.sleep(0.3)
        a.proc.send_signal(signal.SIGSTOP)
        remaining = unsent_outbox_rows(db_path)
        assert 0 < remaining < N_EVENTS, f"stop should land mid-drain ({remaining} left)"
        assert _wait_drained(db_path, 15.0) > 0.5, "took over before the lease expired"
        assert b.expect() == "active"
        a.proc.send_signal(signal.SIGCONT)
        time.sleep(1.0)
        expected += asyncio.run(fill_outbox(db_path, 50, start=N_EVENTS))
        _wait_drained(db_path, 15.0)
        a_stats, b_stats = a.stats(), b.stats()
        assert (a_stats["leases"], b_stats["leases"]) == (1, 1)
        total = a_stats["published"] + b_stats["published"]
        # Only what a had acknowledged but not yet marked sent may have gone out twice
        # (JetStream drops it): the batch it was frozen in and those since its last mark,
        # at most one mark interval of 5-event batches 50 ms apart.
        repeats = 5 * (math.ceil(MARK_EVERY_S / 0.05) + 2)
        assert N_EVENTS + 50 <= total <= N_EVENTS + 50 + repeats, (a_stats, b_stats)
    finally:
        for w in workers:
            w.close()
    _assert_stream(asyncio.run(_stream(fresh_nats.url)), expected)


class _SlowRelay(OutboxRelay):
    """A relay slow enough (5 events per 50 ms) to be stopped mid-drain."""

    async def relay_once(self) -> bool:
        more = await super().relay_once()
        await asyncio.sleep(0.05)
        return more


async def _worker_main(db_path: str, url: str, owner: str, lease_s: float) -> None:
    db = await Database.open(db_path, durable=False)
    # As the operator: a stand-in relaying any test event.
    bus = await Bus.connect(url, name=owner, auth=nats_auth(OPERATOR))
    await bus.ensure_streams()
    relay = _SlowRelay(db, bus, batch=5, poll_s=0.05, owner=owner, lease_s=lease_s,
                       standby_poll_s=0.05)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    task = asyncio.create_task(relay.run())
    while not relay.active:  # noqa: ASYNC110 - a property to poll, not an event
        await asyncio.sleep(0.01)
    print("active", flush=True)
    await stop.wait()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    print("stats " + json.dumps({"published": relay.stats.published,
                                 "leases": relay.stats.leases}), flush=True)
    await bus.close()
    await db.close()


if __name__ == "__main__":
    asyncio.run(_worker_main(sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])))
