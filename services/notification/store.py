"""All SQL of the notification service: the notifications, and the delivery outbox of
their emails (with the addresses kept from user.created)."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, replace

import aiosqlite

from services.common.db import Database, Tx
from services.notification import domain
from services.notification.delivery import DeliveryStatus, PendingMail
from services.notification.domain import Draft, Kind, Notification

# seq orders the listing (newest first) and is the page cursor. UNIQUE(event_id) backs
# up the consumer's inbox: one notification per event, whatever happens.
#
# deliveries is the delivery outbox: a row is written in the same transaction as its
# notification, so a mail is owed exactly when the notification exists; a sender claims
# due PENDING rows after the commit and ends each one SENT or FAILED. A claim (claimed_by,
# next_attempt_at moved past the round) keeps the instances sharing this file from
# sending one mail twice; a crashed sender's claims fall due again when they run out.
# recipients keeps the address and name of every user.created seen (the other events
# carry only a user id).
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
CREATE TABLE IF NOT EXISTS recipients (
    user_id TEXT PRIMARY KEY,
    email TEXT NOT NULL,
    name TEXT NOT NULL DEFAULT ''
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS deliveries (
    notification_id TEXT PRIMARY KEY REFERENCES notifications (id),
    recipient TEXT NOT NULL,
    name TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL CHECK (status IN ('PENDING', 'SENT', 'FAILED')),
    attempts INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at REAL NOT NULL,
    error TEXT NOT NULL DEFAULT '',
    request_id TEXT NOT NULL DEFAULT '',
    claimed_by TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    done_at REAL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (next_attempt_at)
    WHERE status = 'PENDING';
"""

_COLUMNS = ("n.seq, n.id, n.user_id, n.kind, n.subject, n.body, n.read, n.created_at,"
            " n.event_id, d.status AS delivery, d.error AS delivery_error")
_FROM = "notifications n LEFT JOIN deliveries d ON d.notification_id = n.id"
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
        delivery=DeliveryStatus(row["delivery"] or DeliveryStatus.NONE),
        delivery_error=row["delivery_error"] or "",
    )


def insert_sync(tx: Tx, draft: Draft, event_id: str, *, mail: bool = False,
                request_id: str = "") -> str | None:
    """Store the notification an event caused, inside the consumer's transaction (on the
    connection's thread), and with `mail` its delivery outbox row. Returns the new
    notification's id, None when that event already made one."""
    notification_id = uuid.uuid4().hex
    now = time.time()
    cur = tx.execute(
        "INSERT INTO notifications (id, user_id, kind, subject, body, created_at, event_id)"
        " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (event_id) DO NOTHING",
        (notification_id, draft.user_id, draft.kind.value, draft.subject, draft.body,
         now, event_id))
    if cur.rowcount != 1:
        return None
    if mail:
        _owe_mail(tx, notification_id, draft.user_id, request_id, now)
    return notification_id


def _owe_mail(tx: Tx, notification_id: str, user_id: str, request_id: str,
              now: float) -> None:
    # One statement on the consumer's path: the row takes the address kept for the user.
    cur = tx.execute(
        "INSERT INTO deliveries (notification_id, recipient, name, status, next_attempt_at,"
        " request_id, created_at) SELECT ?, email, name, 'PENDING', ?, ?, ?"
        " FROM recipients WHERE user_id = ?",
        (notification_id, now, request_id, now, user_id))
    if cur.rowcount == 1:
        return
    # Nothing to retry: without a user.created there is no address to send to.
    tx.execute(
        "INSERT INTO deliveries (notification_id, recipient, status, next_attempt_at,"
        " error, request_id, created_at, done_at) VALUES (?, '', 'FAILED', ?, ?, ?, ?, ?)",
        (notification_id, now, f"no email address known for user {user_id}",
         request_id, now, now))


def save_recipient_sync(tx: Tx, user_id: str, email: str, name: str) -> None:
    """Keep the address of a user (from user.created), in the consumer's transaction."""
    tx.execute(
        "INSERT INTO recipients (user_id, email, name) VALUES (?, ?, ?)"
        " ON CONFLICT (user_id) DO UPDATE SET email = excluded.email, name = excluded.name",
        (user_id, email, name))


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
        sql = f"SELECT {_COLUMNS} FROM {_FROM} WHERE n.user_id = ?"
        args: list[object] = [user_id]
        if unread_only:
            sql += " AND n.read = 0"
        if before_seq is not None:
            sql += " AND n.seq < ?"
            args.append(before_seq)
        sql += " ORDER BY n.seq DESC LIMIT ?"
        args.append(limit + 1)  # one more tells whether another page exists
        # One bounded page by index: read at once on the read connection.
        rows = await self.db.read_now(lambda tx: tx.all(sql, args))
        more = len(rows) > limit
        rows = rows[:limit]
        return Page([_row(r) for r in rows], int(rows[-1]["seq"]) if more else None)

    async def get(self, notification_id: str) -> Notification | None:
        sql = f"SELECT {_COLUMNS} FROM {_FROM} WHERE n.id = ?"
        row = await self.db.read_now(lambda tx: tx.one(sql, (notification_id,)))
        return None if row is None else _row(row)

    async def mark_read(self, notification_id: str, user_id: str) -> Notification:
        """Idempotent: an already read notification is returned as it is."""
        async with self.db.transaction() as conn:
            cur = await conn.execute(
                f"SELECT {_COLUMNS} FROM {_FROM} WHERE n.id = ?", (notification_id,))
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


class DeliveryStore:
    """The sender's side of the delivery outbox."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def claim(self, owner: str, now: float, limit: int,
                    hold_s: float) -> list[PendingMail]:
        """Take up to `limit` due PENDING mails (oldest first) for `hold_s` seconds: no
        other sender sees them due until then, unless this one hands them back."""
        sql = ("SELECT d.notification_id, d.recipient, d.name, n.subject, n.body,"
               " d.request_id, d.attempts, n.created_at FROM deliveries d"
               " JOIN notifications n ON n.id = d.notification_id"
               " WHERE d.status = 'PENDING' AND d.next_attempt_at <= ?"
               " ORDER BY d.next_attempt_at LIMIT ?")

        def take(tx: Tx) -> list[aiosqlite.Row]:
            rows = tx.all(sql, (now, limit))
            tx.executemany(
                "UPDATE deliveries SET next_attempt_at = ?, claimed_by = ?"
                " WHERE notification_id = ?", [(now + hold_s, owner, r[0]) for r in rows])
            return rows

        rows = await self.db.write(take)
        return [PendingMail(notification_id=r[0], recipient=r[1], name=r[2], subject=r[3],
                            body=r[4], request_id=r[5], attempts=int(r[6]),
                            created_at=float(r[7])) for r in rows]

    async def release(self, owner: str, notification_ids: list[str] | None = None) -> int:
        """Hand claimed mails back, due now: those given, or (None) every claim of `owner`
        (at start: what its previous life held when it died). How many."""
        sql = ("UPDATE deliveries SET next_attempt_at = ?, claimed_by = ''"
               " WHERE status = 'PENDING' AND claimed_by = ?")
        now = time.time()
        if notification_ids is None:
            return await self.db.write(lambda tx: tx.execute(sql, (now, owner)).rowcount)
        ids = list(notification_ids)
        return await self.db.write(lambda tx: tx.executemany(
            sql + " AND notification_id = ?", [(now, owner, i) for i in ids]).rowcount)

    async def backlog(self) -> tuple[int, float | None]:
        """(PENDING mails, creation time of the oldest), by the partial index."""
        row = await self.db.read(lambda tx: tx.one(
            "SELECT count(*), min(created_at) FROM deliveries WHERE status = 'PENDING'"))
        if row is None:
            return 0, None
        return int(row[0]), None if row[1] is None else float(row[1])

    async def next_due_at(self) -> float | None:
        """When the earliest PENDING mail is due; None when nothing is owed."""
        row = await self.db.read_now(lambda tx: tx.one(
            "SELECT min(next_attempt_at) FROM deliveries WHERE status = 'PENDING'"))
        return None if row is None or row[0] is None else float(row[0])

    async def mark_sent(self, notification_id: str, attempts: int) -> None:
        await self._finish(notification_id, "SENT", attempts, "")

    async def mark_failed(self, notification_id: str, attempts: int, reason: str) -> None:
        await self._finish(notification_id, "FAILED", attempts, reason)

    async def _finish(self, notification_id: str, status: str, attempts: int,
                      error: str) -> None:
        now = time.time()
        await self.db.write(lambda tx: tx.execute(
            "UPDATE deliveries SET status = ?, attempts = ?, error = ?, done_at = ?,"
            " claimed_by = '' WHERE notification_id = ? AND status = 'PENDING'",
            (status, attempts, error, now, notification_id)))

    async def retry_later(self, notification_id: str, attempts: int, at: float,
                          error: str) -> None:
        """A temporary failure: try again at `at`; the error is kept for operators."""
        await self.db.write(lambda tx: tx.execute(
            "UPDATE deliveries SET attempts = ?, next_attempt_at = ?, error = ?,"
            " claimed_by = '' WHERE notification_id = ? AND status = 'PENDING'",
            (attempts, at, error, notification_id)))
