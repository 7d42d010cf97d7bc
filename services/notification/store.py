"""All SQL of the notification service: the notifications, and the delivery outbox of
their emails (with the addresses kept from user.created). The tables and what they are
for: migrations/0001_init.*.sql.

`NotificationStore` (the servicer's reads and mark-read) and `DeliveryStore` (the sender's
side of the delivery outbox) are units of work on the storage seam; `insert` and
`save_recipient` are the steps the event handlers run inside the consumer's unit of work.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from services.common.ids import new_id
from services.common.storage import Row, Storage, Tx
from services.notification import domain
from services.notification.delivery import DeliveryStatus, PendingMail
from services.notification.domain import Draft, Kind, Notification

_COLUMNS = ("n.seq, n.id, n.user_id, n.kind, n.subject, n.body, n.read, n.created_at,"
            " n.event_id, d.status AS delivery, d.error AS delivery_error")
_FROM = "notifications n LEFT JOIN deliveries d ON d.notification_id = n.id"
_BY_ID = f"SELECT {_COLUMNS} FROM {_FROM} WHERE n.id = ?"
# One row, kept by triggers (migration 0002): no count over the user's notifications.
_COUNT_UNREAD = "SELECT unread FROM unread_counts WHERE user_id = ?"
# The address kept for the user, in the same statement. The casts tell PostgreSQL what
# the parameters of a SELECT list are (SQLite takes them as they come).
_OWE_MAIL = (
    "INSERT INTO deliveries (notification_id, recipient, name, status, next_attempt_at,"
    " request_id, created_at) SELECT CAST(? AS TEXT), email, name, 'PENDING',"
    " CAST(? AS DOUBLE PRECISION), CAST(? AS TEXT), CAST(? AS DOUBLE PRECISION)"
    " FROM recipients WHERE user_id = ?")
_NO_ADDRESS = (
    "INSERT INTO deliveries (notification_id, recipient, status, next_attempt_at,"
    " error, request_id, created_at, done_at) VALUES (?, '', 'FAILED', ?, ?, ?, ?, ?)")
_RELEASE = ("UPDATE deliveries SET next_attempt_at = ?, claimed_by = ''"
            " WHERE status = 'PENDING' AND claimed_by = ?")


@dataclass(frozen=True, slots=True)
class Page:
    items: list[Notification]
    # seq of the last item when more follow, else None.
    next_after: int | None


class NotificationRepository(Protocol):
    async def list(self, user_id: str, *, unread_only: bool, limit: int,
                   before_seq: int | None) -> Page: ...
    async def get(self, notification_id: str) -> Notification | None: ...
    async def mark_read(self, notification_id: str, user_id: str) -> Notification: ...
    async def count_unread(self, user_id: str) -> int: ...


class DeliveryRepository(Protocol):
    async def claim(self, owner: str, now: float, limit: int,
                    hold_s: float) -> list[PendingMail]: ...
    async def release(self, owner: str, notification_ids: Sequence[str] | None = None
                      ) -> int: ...
    async def backlog(self) -> tuple[int, float | None]: ...
    async def next_due_at(self) -> float | None: ...
    async def mark_sent(self, notification_id: str, attempts: int) -> None: ...
    async def mark_failed(self, notification_id: str, attempts: int, reason: str) -> None: ...
    async def retry_later(self, notification_id: str, attempts: int, at: float,
                          error: str) -> None: ...


def _row(row: Row) -> Notification:
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


# --- steps of the consumer's unit of work -------------------------------------------------


async def insert(tx: Tx, draft: Draft, event_id: str, *, mail: bool = False,
                 request_id: str = "") -> str | None:
    """Store the notification an event caused and, with `mail`, its delivery outbox row.
    Returns the new notification's id, None when that event already made one."""
    notification_id = new_id()
    now = time.time()
    made = await tx.run(
        "INSERT INTO notifications (id, user_id, kind, subject, body, created_at, event_id)"
        " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (event_id) DO NOTHING",
        (notification_id, draft.user_id, draft.kind.value, draft.subject, draft.body,
         now, event_id))
    if made != 1:
        return None
    if mail and not await tx.run(_OWE_MAIL, (notification_id, now, request_id, now,
                                             draft.user_id)):
        # Nothing to retry: without a user.created there is no address to send to.
        await tx.run(_NO_ADDRESS, (notification_id, now,
                                   f"no email address known for user {draft.user_id}",
                                   request_id, now, now))
    return notification_id


async def save_recipient(tx: Tx, user_id: str, email: str, name: str) -> None:
    """Keep the address of a user (from user.created)."""
    await tx.run(
        "INSERT INTO recipients (user_id, email, name) VALUES (?, ?, ?)"
        " ON CONFLICT (user_id) DO UPDATE SET email = excluded.email, name = excluded.name",
        (user_id, email, name))


# --- the repositories ---------------------------------------------------------------------


class NotificationStore:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage

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

        async def run(tx: Tx) -> list[Row]:
            return await tx.fetch(sql, args)  # one bounded page by index

        rows = await self.storage.read(run)
        more = len(rows) > limit
        rows = rows[:limit]
        return Page([_row(r) for r in rows], int(rows[-1]["seq"]) if more else None)

    async def get(self, notification_id: str) -> Notification | None:
        async def run(tx: Tx) -> Row | None:
            return await tx.fetchrow(_BY_ID, (notification_id,))

        row = await self.storage.read(run)
        return None if row is None else _row(row)

    async def mark_read(self, notification_id: str, user_id: str) -> Notification:
        """Idempotent: an already read notification is returned as it is."""
        async def run(tx: Tx) -> Notification:
            row = await tx.fetchrow(_BY_ID, (notification_id,))
            found = domain.check_owner(None if row is None else _row(row), notification_id,
                                       user_id)
            if not found.read:
                await tx.run("UPDATE notifications SET read = 1 WHERE id = ?",
                             (notification_id,))
            return replace(found, read=True)

        return await self.storage.write(run)

    async def count_unread(self, user_id: str) -> int:
        async def run(tx: Tx) -> int:
            return int(await tx.fetchval(_COUNT_UNREAD, (user_id,)) or 0)

        return await self.storage.read(run)


class DeliveryStore:
    """The sender's side of the delivery outbox."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    async def claim(self, owner: str, now: float, limit: int,
                    hold_s: float) -> list[PendingMail]:
        """Take up to `limit` due PENDING mails (oldest first) for `hold_s` seconds: no
        other sender sees them due until then, unless this one hands them back. (Two
        senders claiming at once: SQLite's write lock orders them; on PostgreSQL one of
        the two serializable transactions is refused and runs again, then finds the rows
        claimed.)"""
        sql = ("SELECT d.notification_id, d.recipient, d.name, n.subject, n.body,"
               " d.request_id, d.attempts, n.created_at FROM deliveries d"
               " JOIN notifications n ON n.id = d.notification_id"
               " WHERE d.status = 'PENDING' AND d.next_attempt_at <= ?"
               " ORDER BY d.next_attempt_at LIMIT ?")

        async def take(tx: Tx) -> list[Row]:
            rows = await tx.fetch(sql, (now, limit))
            await tx.run_many(
                "UPDATE deliveries SET next_attempt_at = ?, claimed_by = ?"
                " WHERE notification_id = ?", [(now + hold_s, owner, r[0]) for r in rows])
            return rows

        rows = await self.storage.write(take)
        return [PendingMail(notification_id=r[0], recipient=r[1], name=r[2], subject=r[3],
                            body=r[4], request_id=r[5], attempts=int(r[6]),
                            created_at=float(r[7])) for r in rows]

    async def release(self, owner: str, notification_ids: Sequence[str] | None = None) -> int:
        """Hand claimed mails back, due now: those given, or (None) every claim of `owner`
        (at start: what its previous life held when it died). How many (of those given:
        their number)."""
        now = time.time()
        ids = None if notification_ids is None else list(notification_ids)

        async def run(tx: Tx) -> int:
            if ids is None:
                return await tx.run(_RELEASE, (now, owner))
            # One batch (a round's worth of rows); rows no longer PENDING are left alone.
            await tx.run_many(_RELEASE + " AND notification_id = ?",
                              [(now, owner, notification_id) for notification_id in ids])
            return len(ids)

        return await self.storage.write(run)

    async def backlog(self) -> tuple[int, float | None]:
        """(PENDING mails, creation time of the oldest), by the partial index."""
        async def run(tx: Tx) -> Row | None:
            return await tx.fetchrow(
                "SELECT count(*), min(created_at) FROM deliveries WHERE status = 'PENDING'")

        row = await self.storage.read(run)
        if row is None:
            return 0, None
        return int(row[0]), None if row[1] is None else float(row[1])

    async def next_due_at(self) -> float | None:
        """When the earliest PENDING mail is due; None when nothing is owed."""
        async def run(tx: Tx) -> float | None:
            due = await tx.fetchval(
                "SELECT min(next_attempt_at) FROM deliveries WHERE status = 'PENDING'")
            return None if due is None else float(due)

        return await self.storage.read(run)

    async def mark_sent(self, notification_id: str, attempts: int) -> None:
        await self._finish(notification_id, "SENT", attempts, "")

    async def mark_failed(self, notification_id: str, attempts: int, reason: str) -> None:
        await self._finish(notification_id, "FAILED", attempts, reason)

    async def _finish(self, notification_id: str, status: str, attempts: int,
                      error: str) -> None:
        now = time.time()

        async def run(tx: Tx) -> None:
            await tx.run(
                "UPDATE deliveries SET status = ?, attempts = ?, error = ?, done_at = ?,"
                " claimed_by = '' WHERE notification_id = ? AND status = 'PENDING'",
                (status, attempts, error, now, notification_id))

        await self.storage.write(run)

    async def retry_later(self, notification_id: str, attempts: int, at: float,
                          error: str) -> None:
        """A temporary failure: try again at `at`; the error is kept for operators."""
        async def run(tx: Tx) -> None:
            await tx.run(
                "UPDATE deliveries SET attempts = ?, next_attempt_at = ?, error = ?,"
                " claimed_by = '' WHERE notification_id = ? AND status = 'PENDING'",
                (attempts, at, error, notification_id))

        await self.storage.write(run)
