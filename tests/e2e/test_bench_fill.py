"""The grown-shop fill at a tiny scale: the sizes asked for, kept and reused, and a shop
started on a copy of it serves the bench user's own orders without replaying the
stream's events.

Sizes only are asserted; how fast the fill ran is reported by the bench, never here.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import urllib.request
from contextlib import closing
from pathlib import Path

import nats
import pytest

from bench import shop as shop_mod
from bench.fill import MANIFEST, checkout, count_rows, ensure_filled
from bench.fill_plan import CONSUMERS, FillSizes
from bench.fill_stream import FillNats
from services.common.events import STREAM

SIZES = FillSizes(orders=1_000, users=100, inbox=1_000, events=1_000)
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _stream_state(nats_dir: Path) -> tuple[int, dict[str, int]]:
    """(events in the stream, pending per durable) of a stopped store, read on a server
    of its own."""
    async def read(url: str) -> tuple[int, dict[str, int]]:
        nc = await nats.connect(url)
        try:
            js = nc.jetstream()
            info = await js.stream_info(STREAM)
            pending = {d: int((await js.consumer_info(STREAM, d)).num_pending or 0)
                       for _, d, _ in CONSUMERS}
            return int(info.state.messages), pending
        finally:
            await nc.close()

    server = FillNats(nats_dir, secured=False).start()
    try:
        return asyncio.run(read(server.url))
    finally:
        server.stop()


def _notifications_of(data_dir: Path, users: set[str]) -> int:
    with closing(sqlite3.connect(f"file:{data_dir / 'notification.db'}?mode=ro",
                                 uri=True)) as conn:
        return sum(1 for (u,) in conn.execute("SELECT user_id FROM notifications") if u in users)


def _files(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if p.is_file()}


@pytest.mark.timeout(240)
def test_fill_has_the_sizes_and_a_shop_on_it_serves_the_bench_users_orders(
        tmp_path: Path) -> None:
    kept_root = tmp_path / "kept"
    filled = ensure_filled(SIZES, kept_root)
    assert not filled.reused
    counts = count_rows(filled.dir)
    assert (counts["orders"], counts["sagas"], counts["users"], counts["inbox"],
            counts["recipients"]) == (1_000, 1_000, 100, 1_000, 100)
    assert counts["saga_history"] >= counts["orders"]
    assert counts["notifications"] == counts["deliveries"] > counts["orders"]
    assert json.loads((filled.dir / MANIFEST).read_text())["counts"]["events"] == 1_000
    # Every saga and history row belongs to an order; no saga is in flight.
    with closing(sqlite3.connect(filled.dir / "order.db")) as conn:
        assert conn.execute("SELECT count(*) FROM sagas s LEFT JOIN orders o ON o.id ="
                            " s.order_id WHERE o.id IS NULL").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM saga_history h LEFT JOIN orders o ON o.id ="
                            " h.order_id WHERE o.id IS NULL").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM sagas WHERE status IN"
                            " ('running', 'compensating')").fetchone()[0] == 0
        statuses = {r[0] for r in conn.execute("SELECT DISTINCT status FROM orders")}
        order_users = {r[0] for r in conn.execute("SELECT DISTINCT user_id FROM orders")}
    assert statuses == {"SHIPPED", "CONFIRMED", "CANCELLED", "REQUIRES_ATTENTION"}
    with closing(sqlite3.connect(filled.dir / "user.db")) as conn:
        grown_users = {r[0] for r in conn.execute("SELECT id FROM users")}
    assert order_users <= grown_users
    events, pending = _stream_state(filled.dir / "nats")
    assert events == 1_000
    assert pending == {d: 0 for _, d, _ in CONSUMERS}

    before = _files(filled.dir)
    run_dir = tmp_path / "run"
    again, _ = checkout(SIZES, run_dir, kept_root)  # what a bench run does: reuse, copy
    assert again.reused and again.dir == filled.dir
    assert _files(run_dir).keys() >= {"order.db", "user.db", "notification.db"}
    target = shop_mod.start_shop(run_dir)
    try:
        shop_mod.prepare(target, orders=3)
        req = urllib.request.Request(f"{target.base_url}/api/orders?pageSize=50",
                                     headers=target.auth)
        with _OPENER.open(req, timeout=15.0) as resp:
            listed = json.loads(resp.read())
    finally:
        target.stop()
    assert len(listed["orders"]) == 3
    assert not {o["userId"] for o in listed["orders"]} & grown_users

    after = count_rows(run_dir)
    assert after["orders"] == 1_003 and after["users"] == 100 + 2  # the bench user, the admin
    # The consumers started where the fill left them: nothing was handled again for the
    # grown users (a replay would have written notifications for the events the inbox
    # no longer remembers).
    assert _notifications_of(run_dir, grown_users) == _notifications_of(filled.dir, grown_users)
    assert _files(filled.dir) == before  # the kept copy is never changed by a run
