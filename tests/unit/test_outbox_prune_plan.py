"""Forgetting sent outbox rows stays cheap as the outbox grows: an index range, no scan."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from services.common.db import migrate
from services.common.outbox import PRUNE_SENT
from services.common.schema import COMMON


def test_pruning_sent_rows_searches_an_index(tmp_path: Path) -> None:
    path = tmp_path / "order.db"
    migrate(path, [COMMON])
    conn = sqlite3.connect(path)
    try:
        conn.executemany(
            "INSERT INTO outbox (event_id, subject, aggregate_id, data, created_at, sent_at)"
            " VALUES (?, 'order.created', 'o', x'00', 0, ?)",
            [(f"e{i}", float(i) if i % 10 else None) for i in range(2000)])
        conn.execute("ANALYZE")
        plan = " ".join(str(r[-1]) for r in conn.execute(f"EXPLAIN QUERY PLAN {PRUNE_SENT}",
                                                          (500.0,)))
    finally:
        conn.close()
    assert "USING INDEX outbox_sent" in plan, plan
    assert "SCAN" not in plan, plan
