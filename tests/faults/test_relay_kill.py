"""kill -9 the outbox relay again and again: every event ends up in the stream exactly
once, in order per aggregate. First a lone relay draining a filled outbox; then the payment
service (whose relay publishes every charge and decline) killed five times, each time with
events still unsent, while customers place orders (the full invariant check afterwards:
one receipt per charge, one PAYMENT_FAILED per decline)."""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
from shop.events.v1 import envelope_pb2

from ops.natsd import NatsServer
from ops.pgserve import EmbeddedPostgres
from ops.process import System
from services.common.bus import Bus
from services.common.events import STREAM
from services.common.pg import PgDatabase
from services.common.schema import COMMON
from tests.fixtures_services import START_TIMEOUT_S
from tests.support.invariants import check_invariants
from tests.support.load import OrderClient, paced, set_stock
from tests.support.mesh import nats_auth
from tests.support.outboxes import fill_outbox, fill_storage_at_once, unsent_outbox_rows
from tests.support.users import create_users

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]
N_EVENTS = 500




def _start(db_path: Path | str, url: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-m", "tests.support.relay_worker",
                             str(db_path), url, "5"], cwd=ROOT, stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


async def _stream(url: str) -> list[envelope_pb2.Envelope]:
    bus = await Bus.connect(url, name="check", auth=nats_auth())
    try:
        info = await bus.js.stream_info(STREAM)
        envs = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            raw = await bus.js.get_msg(STREAM, seq=seq)
            envs.append(envelope_pb2.Envelope.FromString(raw.data or b""))
        return envs
    finally:
        await bus.close()


def test_relay_survives_kill_9(tmp_path: Path, fresh_nats: NatsServer) -> None:
    db_path = tmp_path / "order.db"
    expected = asyncio.run(fill_outbox(db_path, N_EVENTS, durable=True))
    rng = random.Random(7)
    kills = 0
    progress: list[int] = []
    deadline = time.monotonic() + 90
    while kills < 5 or unsent_outbox_rows(db_path):
        assert time.monotonic() < deadline, "outbox never drained"
        before = unsent_outbox_rows(db_path)
        proc = _start(db_path, fresh_nats.url)
        try:
            if kills < 5:
                # Mid-drain: once this run has marked some rows sent, a little later.
                while unsent_outbox_rows(db_path) == before and proc.poll() is None:
                    assert time.monotonic() < deadline, "the relay published nothing"
                    time.sleep(0.002)
                time.sleep(rng.uniform(0.0, 0.03))
                proc.kill()  # SIGKILL, mid-batch
                kills += 1
            else:
                assert proc.wait(60) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        progress.append(unsent_outbox_rows(db_path))
    assert kills >= 5
    print("pending after each run:", progress)
    # The kills really landed mid-drain: some killed run left work behind.
    assert any(0 < p < N_EVENTS for p in progress[:5]), progress

    envs = asyncio.run(_stream(fresh_nats.url))
    assert len(envs) == N_EVENTS, "a duplicate or a loss in the stream"
    assert {e.id for e in envs} == {eid for eid, _ in expected}
    for agg in {a for _, a in expected}:
        want = [eid for eid, a in expected if a == agg]
        got = [e.id for e in envs if e.aggregate_id == agg]
        assert got == want, f"order broken for {agg}"


KILLS = 5
ORDERS = 80
RUN_S = 12.0
STOCK = {"running-shoes": 10_000}


async def test_payment_relay_killed_five_times_under_orders(fault_system: System) -> None:
    sysm = fault_system
    users = await create_users(sysm.addr("user"), 6, "relay-kill")
    await set_stock(sysm.addr("inventory"), STOCK)
    payment_db = sysm.data_dir / "payment.db"
    unsent_at_kill: list[int] = []
    rng = random.Random(11)

    async def kills() -> None:
        deadline = time.monotonic() + RUN_S + 20
        while len(unsent_at_kill) < KILLS:
            await asyncio.sleep(rng.uniform(0.5, 1.5))
            # Kill only with events committed but not yet acknowledged: mid-drain.
            while (unsent := unsent_outbox_rows(payment_db)) == 0:
                assert time.monotonic() < deadline, "the payment outbox never had a backlog"
                await asyncio.sleep(0.002)
            sysm["payment"].kill()
            unsent_at_kill.append(unsent)
            await asyncio.to_thread(sysm["payment"].restart, START_TIMEOUT_S, graceful=False)

    async with OrderClient(sysm.addr("order"), timeout_s=5, retry_for_s=40) as client:
        killer = asyncio.create_task(kills())
        await paced(ORDERS, RUN_S, 8, lambda i: client.create(
            users[i % 6], {"running-shoes": 1 + i % 2}, key=f"relay-{i}",
            card="tok_chargeDeclined" if i % 6 == 5 else "tok_visa"))
        await asyncio.wait_for(killer, 60)
    assert client.unexpected == [], client.unexpected
    assert len(unsent_at_kill) == KILLS and min(unsent_at_kill) > 0, unsent_at_kill

    report = await check_invariants(sysm, stock_set=STOCK, created=client.created,
                                    expect_orders=ORDERS, timeout_s=60)
    report.assert_ok()
    assert report.count("SHIPPED") > 0 and report.count("CANCELLED") > 0, report.summary()
    print(f"\nunsent payment events at each kill {unsent_at_kill}; {report.summary()}")


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def test_two_relays_on_postgres_survive_kill_9(fresh_nats: NatsServer,
                                               pg_server: EmbeddedPostgres) -> None:
    """Two relay processes on one database (one holds the advisory lock, one waits);
    one of them is killed -9 at random and replaced, again and again. The waiting one takes
    over at once; the stream holds every event once, in order per aggregate."""
    url = pg_server.url("shop_order")

    async def fill(n: int, start: int) -> list[tuple[str, str]]:
        db = await PgDatabase.open(url, migrations=[COMMON])
        try:
            return await fill_storage_at_once(db, n, start=start)
        finally:
            await db.close()

    def unsent() -> int:
        [n] = pg_server.psql("SELECT count(*) FROM outbox WHERE sent_at IS NULL", "shop_order")
        return int(n)

    try:
        rng = random.Random(11)
        procs = [_start(url, fresh_nats.url), _start(url, fresh_nats.url)]
        kills = 0
        progress: list[int] = []
        expected: list[tuple[str, str]] = []
        deadline = time.monotonic() + 90
        try:
            while kills < 5:
                assert time.monotonic() < deadline, "outbox never drained"
                # A round of events lands at once while both relays run (a fast relay
                # would drain a single fill before the first kill), then a kill mid-drain.
                expected += asyncio.run(fill(N_EVENTS, len(expected)))
                time.sleep(rng.uniform(0.01, 0.06))
                victim = procs.pop(rng.randrange(2))
                victim.kill()  # SIGKILL: its session ends, the lock passes on
                _stop(victim)
                kills += 1
                progress.append(unsent())
                procs.append(_start(url, fresh_nats.url))
            for proc in procs:
                assert proc.wait(60) == 0  # each drains (the outbox empties) and exits
        finally:
            for proc in procs:
                _stop(proc)
        print("pending after each kill:", progress)
        assert unsent() == 0
        assert any(p > 0 for p in progress), progress  # kills landed mid-drain

        envs = asyncio.run(_stream(fresh_nats.url))
        assert len(envs) == len(expected), "a duplicate or a loss in the stream"
        assert {e.id for e in envs} == {eid for eid, _ in expected}
        for agg in {a for _, a in expected}:
            want = [eid for eid, a in expected if a == agg]
            got = [e.id for e in envs if e.aggregate_id == agg]
            assert got == want, f"order broken for {agg}"
    finally:
        pg_server.drop_databases()
