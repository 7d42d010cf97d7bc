"""All SQL of the notification service."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, replace

import aiosqlite

from services.common.db import Database, Tx
from services.notification import domain
from services.notification.domain import Draft, Kind, Notification

# seq orders the listing (newest first) and is the page cursor. UNIQUE(event_id) backs
# up the consumer's inbox: one notification per event, whatever happens.
SCHEMA = """
CREATE TABLE IF NOT EXISTS notifications (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    user_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    subject TEXT NOT NULL,
    body TEXT NOT NULL,
    read INTEGER NOT NULL DEFAULT 0 CHECK (read IN (0, 1)),
    created_at REAL NOT NULL,
    event_id TEXT NOT NULL UNIQUE
);
CREATE INDEX IF NOT EXISTS notifications_user ON notifications (user_id, seq);
CREATE INDEX IF NOT EXISTS notifications_unread ON notifications (user_id, seq)
    WHERE read = 0;
"""

_COLUMNS = "seq, id, user_id, kind, subject, body, read, created_at, event_id"
_COUNT_UNREAD = "SELECT count(*) FROM notifications WHERE user_id = ? AND read = 0"


def _row(row: aiosqlite.Row) -> Notification:
    return Notification(
        id=row["id"],
        user_id=row["user_id"],
        kind=Kind(row["kind"]),
        subject=row["subject"],
        body=row["body"],
        read=bool(row["read"]),
        created_at=float(row["created_at"]),
        event_id=row["event_id"],
    )


def insert_sync(tx: Tx, draft: Draft, event_id: str) -> bool:
    """Store the notification an event caused, inside the consumer's transaction (on the
    connection's thread). False when that event already made one."""
    cur = tx.execute(
        "INSERT INTO notifications (id, user_id, kind, subject, body, created_at, event_id)"
        " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (event_id) DO NOTHING",
        (uuid.uuid4().hex, draft.user_id, draft.kind.value, draft.subject, draft.body,
         time.time(), event_id))
    return cur.rowcount == 1


@dataclass(frozen=True, slots=True)
class Page:
    items: list[Notification]
    # seq of the last item when more follow, else None.
    next_after: int | None


class NotificationStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def list(self, user_id: str, *, unread_only: bool, limit: int,
                   before_seq: int | None) -> Page:
        sql = f"SELECT {_COLUMNS} FROM notifications WHERE user_id = ?"
        args: list[object] = [user_id]
        if unread_only:
            sql += " AND read = 0"
        if before_seq is not None:
            sql += " AND seq < ?"
            args.append(before_seq)
        sql += " ORDER BY seq DESC LIMIT ?"
        args.append(limit + 1)  # one more tells whether another page exists
        # One bounded page by index: read at once on the read connection.
        rows = await self.db.read_now(lambda tx: tx.all(sql, args))
        more = len(rows) > limit
        rows = rows[:limit]
        return Page([_row(r) for r in rows], int(rows[-1]["seq"]) if more else None)

    async def mark_read(self, notification_id: str, user_id: str) -> Notification:
        """Idempotent: an already read notification is returned as it is."""
        async with self.db.transaction() as conn:
            cur = await conn.execute(
                f"SELECT {_COLUMNS} FROM notifications WHERE id = ?", (notification_id,))
            row = await cur.fetchone()
            found = domain.check_owner(None if row is None else _row(row), notification_id,
                                       user_id)
            if not found.read:
                await conn.execute("UPDATE notifications SET read = 1 WHERE id = ?",
                                   (notification_id,))
            return replace(found, read=True)

    async def count_unread(self, user_id: str) -> int:
        # Counted in the partial index notifications_unread alone (its rows are the
        # unread ones): a few microseconds, so read at once on the read connection.
        row = await self.db.read_now(lambda tx: tx.one(_COUNT_UNREAD, (user_id,)))
        return int(row[0]) if row is not None else 0
