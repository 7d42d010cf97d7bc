"""kill -9 the outbox relay again and again: every event ends up in the stream exactly
once, in order per aggregate."""

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
from services.common.bus import Bus
from services.common.events import STREAM
from services.common.pg import PgDatabase
from services.common.schema import COMMON
from tests.support.outboxes import fill_outbox, fill_storage, unsent_outbox_rows

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
    bus = await Bus.connect(url, name="check")
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
        proc = _start(db_path, fresh_nats.url)
        try:
            if kills < 5:
                time.sleep(rng.uniform(0.02, 0.12))
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

    async def fill() -> list[tuple[str, str]]:
        db = await PgDatabase.open(url, migrations=[COMMON])
        try:
            return await fill_storage(db, N_EVENTS)
        finally:
            await db.close()

    def unsent() -> int:
        [n] = pg_server.psql("SELECT count(*) FROM outbox WHERE sent_at IS NULL", "shop_order")
        return int(n)

    try:
        expected = asyncio.run(fill())
        rng = random.Random(11)
        procs = [_start(url, fresh_nats.url), _start(url, fresh_nats.url)]
        kills = 0
        progress: list[int] = []
        deadline = time.monotonic() + 90
        try:
            while kills < 5:
                assert time.monotonic() < deadline, "outbox never drained"
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
        assert any(0 < p < N_EVENTS for p in progress), progress  # kills landed mid-drain

        envs = asyncio.run(_stream(fresh_nats.url))
        assert len(envs) == N_EVENTS, "a duplicate or a loss in the stream"
        assert {e.id for e in envs} == {eid for eid, _ in expected}
        for agg in {a for _, a in expected}:
            want = [eid for eid, a in expected if a == agg]
            got = [e.id for e in envs if e.aggregate_id == agg]
            assert got == want, f"order broken for {agg}"
    finally:
        pg_server.drop_databases()
