"""The stock ledger's tables: per product an append-only stream of events, its stock level
(the projection) and its snapshots. Statements for a unit of work (`Tx`); no transaction
of its own.

An append writes, in the caller's unit of work: the events at the versions after the
stream's head, the stock row at the new level and version (guarded by the version it was
read at), and a snapshot when the stream crossed a multiple of `snapshot_every`. The
primary key (product_id, version) of `inventory_events` is the unique (stream, version):
two appends can never both take a version. A guard that finds the row moved raises
`VersionConflict`: the store runs its whole unit of work again on fresh state.

`recorded_at` never decreases along a stream (an append takes max(now, the head's time)),
so "the stock at time T" is the fold of a prefix of the stream.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from services.common.storage import Row, Tx
from services.inventory import ledger
from services.inventory.ledger import Event, Kind, Level

# In product order, locked for a `locked` unit of work (two appends never deadlock).
_HEAD = ("SELECT product_id, available, reserved, sold, total, version, updated_at"
         " FROM stock WHERE product_id IN ({marks}) ORDER BY product_id{lock}")
_INSERT_EVENT = (
    "INSERT INTO inventory_events (product_id, version, kind, order_id, quantity,"
    " carried_reserved, carried_sold, recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
_EVENT_COLUMNS = "version, kind, order_id, quantity, carried_reserved, carried_sold, recorded_at"


class VersionConflict(RuntimeError):
    """Another writer appended to the stream since it was read."""


class Head(NamedTuple):
    """A stream's head as the stock row holds it: the level at `level.version`, and the
    time of the event that made it."""

    product_id: str
    level: Level
    at: float


class Recorded(NamedTuple):
    """An event as stored: its version and time with it."""

    version: int
    event: Event
    at: float


def head_of(row: Row) -> Head:
    """A Head from a row with the stock table's columns."""
    return Head(str(row["product_id"]),
                Level(int(row["available"]), int(row["reserved"]), int(row["sold"]),
                      int(row["total"]), int(row["version"])), float(row["updated_at"]))


_KIND_OF = {k.value: k for k in Kind}  # a dict lookup: a replay converts a row per event


def recorded(row: Row) -> Recorded:
    """An event row (the columns of _EVENT_COLUMNS, in order) as a Recorded."""
    version, kind, order_id, quantity, carried_r, carried_s, at = row
    carried = None if carried_r is None else (int(carried_r), int(carried_s or 0))
    return Recorded(int(version), Event(_KIND_OF[kind], int(quantity), str(order_id), carried),
                    float(at))


async def heads(tx: Tx, product_ids: Sequence[str], *, lock: bool = True) -> dict[str, Head]:
    """The heads of the streams that exist among `product_ids`; with `lock` (in a write)
    locked until the commit on PostgreSQL (`tx.for_update`)."""
    if not product_ids:
        return {}
    rows = await tx.fetch(_HEAD.format(marks=",".join("?" * len(product_ids)),
                                       lock=tx.for_update if lock else ""), list(product_ids))
    return {h.product_id: h for h in map(head_of, rows)}


async def append(tx: Tx, head: Head | None, product_id: str, events: Sequence[Event], *,
                 snapshot_every: int, now: float | None = None) -> Level:
    """Append `events` to the stream whose head was read as `head` (None: a new stream);
    the new level. InvalidEvent (nothing written) if they cannot follow the head;
    VersionConflict if the stream moved since `head` was read."""
    start = head.level if head is not None else ledger.EMPTY
    at = max(time.time() if now is None else now, head.at if head is not None else 0.0)
    level = start
    rows = []
    for e in events:
        level = ledger.apply(level, e)
        carried_r, carried_s = e.carried if e.carried is not None else (None, None)
        rows.append((product_id, level.version, e.kind.value, e.order_id, e.quantity,
                     carried_r, carried_s, at))
    values = (level.available, level.reserved, level.sold, level.total, level.version, at)
    if head is None:
        changed = await tx.run(
            "INSERT INTO stock (product_id, available, reserved, sold, total, version,"
            " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (product_id) DO NOTHING",
            (product_id, *values))
    else:
        changed = await tx.run(
            "UPDATE stock SET available = ?, reserved = ?, sold = ?, total = ?, version = ?,"
            " updated_at = ? WHERE product_id = ? AND version = ?",
            (*values, product_id, start.version))
    if changed != 1:
        raise VersionConflict(f"stream {product_id} moved past version {start.version}")
    if len(rows) == 1:
        await tx.run(_INSERT_EVENT, rows[0])  # the usual case: cheaper than executemany
    else:
        await tx.run_many(_INSERT_EVENT, rows)
    if ledger.snapshot_due(start.version, level.version, snapshot_every):
        await tx.run(
            "INSERT INTO inventory_snapshots (product_id, version, format, state, recorded_at)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (product_id, version) DO NOTHING",
            (product_id, level.version, ledger.SNAPSHOT_FORMAT, ledger.snapshot_state(level),
             at))
    return level


@dataclass(frozen=True, slots=True)
class Snapshot:
    level: Level
    at: float


async def latest_snapshot(tx: Tx, product_id: str, *, upto_version: int | None = None,
                          upto_time: float | None = None) -> Snapshot | None:
    """The newest valid snapshot of the current format at or before a version or a time."""
    sql = ("SELECT version, format, state, recorded_at FROM inventory_snapshots"
           " WHERE product_id = ? AND format = ?")
    params: list[object] = [product_id, ledger.SNAPSHOT_FORMAT]
    if upto_version is not None:
        sql += " AND version <= ?"
        params.append(upto_version)
    if upto_time is not None:
        sql += " AND recorded_at <= ?"
        params.append(upto_time)
    # A few, not one: a damaged newest snapshot falls back to the one before it.
    for row in await tx.fetch(sql + " ORDER BY version DESC LIMIT 3", params):
        level = ledger.from_snapshot(str(row["state"]), int(row["version"]), int(row["format"]))
        if level is not None:
            return Snapshot(level, float(row["recorded_at"]))
    return None


async def latest_snapshots(tx: Tx, product_ids: Sequence[str]) -> dict[str, Snapshot]:
    """`latest_snapshot` of several streams in one query (the three newest of each, so a
    damaged newest one falls back to the one before)."""
    if not product_ids:
        return {}
    marks = ",".join("?" * len(product_ids))
    rows = await tx.fetch(
        "SELECT product_id, version, state, recorded_at FROM (SELECT product_id, version,"
        " state, recorded_at, ROW_NUMBER() OVER (PARTITION BY product_id"
        " ORDER BY version DESC) AS n FROM inventory_snapshots"
        f" WHERE format = ? AND product_id IN ({marks})) AS newest WHERE n <= 3"
        " ORDER BY product_id, version DESC", [ledger.SNAPSHOT_FORMAT, *product_ids])
    out: dict[str, Snapshot] = {}
    for row in rows:
        pid = str(row["product_id"])
        if pid in out:
            continue
        level = ledger.from_snapshot(str(row["state"]), int(row["version"]), ledger.SNAPSHOT_FORMAT)
        if level is not None:
            out[pid] = Snapshot(level, float(row["recorded_at"]))
    return out


async def events_after(tx: Tx, product_id: str, version: int, *,
                       upto_version: int | None = None,
                       upto_time: float | None = None) -> list[Recorded]:
    sql = f"SELECT {_EVENT_COLUMNS} FROM inventory_events WHERE product_id = ? AND version > ?"
    params: list[object] = [product_id, version]
    if upto_version is not None:
        sql += " AND version <= ?"
        params.append(upto_version)
    if upto_time is not None:
        sql += " AND recorded_at <= ?"
        params.append(upto_time)
    return [recorded(r) for r in await tx.fetch(sql + " ORDER BY version", params)]


@dataclass(frozen=True, slots=True)
class Loaded:
    """A stream's level, how many events were replayed for it, the time of its last event
    (0.0 for an empty stream)."""

    level: Level
    replayed: int
    at: float


async def load(tx: Tx, product_id: str, *, upto_version: int | None = None,
               upto_time: float | None = None, snapshots: bool = True) -> Loaded:
    """The level of a stream from its latest snapshot (unless `snapshots` is False) and the
    events after it, up to a version or a time. Version 0: no event by then. InvalidEvent
    when the stored events cannot be replayed."""
    snap = None
    if snapshots:
        snap = await latest_snapshot(tx, product_id, upto_version=upto_version,
                                     upto_time=upto_time)
    start, at = (snap.level, snap.at) if snap is not None else (ledger.EMPTY, 0.0)
    rest = await events_after(tx, product_id, start.version, upto_version=upto_version,
                              upto_time=upto_time)
    if rest:
        at = rest[-1].at
    return Loaded(ledger.fold((r.event for r in rest), start), len(rest), at)


async def newest_first(tx: Tx, product_id: str, *, before: int | None,
                       limit: int) -> list[Recorded]:
    """Up to `limit` events of a stream with versions below `before`, newest first."""
    sql = f"SELECT {_EVENT_COLUMNS} FROM inventory_events WHERE product_id = ?"
    params: list[object] = [product_id]
    if before is not None:
        sql += " AND version < ?"
        params.append(before)
    params.append(limit)
    return [recorded(r) for r in await tx.fetch(sql + " ORDER BY version DESC LIMIT ?", params)]


def with_levels(start: Level, page: Iterable[Recorded]) -> list[tuple[Recorded, Level]]:
    """Each event of an ascending run with the level right after it."""
    out: list[tuple[Recorded, Level]] = []
    level = start
    for r in page:
        level = ledger.apply(level, r.event)
        out.append((r, level))
    return out
