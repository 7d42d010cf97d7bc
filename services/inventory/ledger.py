"""The stock ledger: a product's events, the pure fold that turns them into its stock, and
the snapshot format. Stdlib only, no I/O.

Per product one stream of events, numbered 1, 2, 3 ... (its versions). A stock count
(`STOCK_SET`) sets available and with it the stock ever set (`total`); every other event
moves units between available, reserved and sold for one order, so
available + reserved + sold == total after every event. `apply` refuses an event that
would drive a count negative, so a fold either yields a valid level or raises.

Events and levels are named tuples: a replay makes one of each per event.

A snapshot is the level at one version, tagged with `SNAPSHOT_FORMAT`: a fold that changes
bumps the format, and snapshots of another format are ignored (the stream is replayed).
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable
from typing import NamedTuple

# Bump when `apply` changes meaning: older snapshots are then ignored, never trusted.
SNAPSHOT_FORMAT = 1


class Kind(enum.StrEnum):
    STOCK_SET = "stock_set"  # an operator's count (or a product's first stock)
    RESERVED = "reserved"  # available -> reserved for an order
    RELEASED = "released"  # reserved -> available (the order let go)
    COMMITTED = "committed"  # reserved -> sold
    RESTOCKED = "restocked"  # sold -> available (a confirmed order cancelled before dispatch)


# Every kind but STOCK_SET belongs to one order.
ORDER_KINDS = frozenset({Kind.RESERVED, Kind.RELEASED, Kind.COMMITTED, Kind.RESTOCKED})


class InvalidEvent(ValueError):
    """An event that cannot follow the level it is applied to (a count would go negative,
    a version skipped, a carried-over level other than first)."""


class Event(NamedTuple):
    """One fact of a product's stream. `quantity`: the units moved, or for STOCK_SET the
    available count set. `carried`: (reserved, sold) of a level recorded before the ledger
    existed, only on a stream's first event (its opening balance)."""

    kind: Kind
    quantity: int
    order_id: str = ""
    carried: tuple[int, int] | None = None


class Level(NamedTuple):
    """A product's stock after `version` events. `total`: the stock ever set."""

    available: int = 0
    reserved: int = 0
    sold: int = 0
    total: int = 0
    version: int = 0


EMPTY = Level()


def check_event(e: Event) -> None:
    """The event's own shape, independent of any level."""
    if e.quantity < 0:
        raise InvalidEvent(f"{e.kind.value}: negative quantity {e.quantity}")
    if (e.kind in ORDER_KINDS) != bool(e.order_id):
        raise InvalidEvent(f"{e.kind.value}: order id {'given' if e.order_id else 'missing'}")
    if e.kind in ORDER_KINDS and e.quantity == 0:
        raise InvalidEvent(f"{e.kind.value}: moves no units")
    if e.carried is not None and (e.kind is not Kind.STOCK_SET or min(e.carried) < 0):
        raise InvalidEvent(f"{e.kind.value}: carried level {e.carried} not allowed")


def apply(level: Level, e: Event) -> Level:
    """The level after `e` (its version one more); InvalidEvent if `e` cannot follow it."""
    check_event(e)
    a, r, s, q = level.available, level.reserved, level.sold, e.quantity
    version = level.version + 1
    if e.kind is Kind.STOCK_SET:
        if e.carried is not None:
            if level.version != 0:
                raise InvalidEvent(f"a carried-over level at version {version}, not 1")
            r, s = e.carried
        return Level(q, r, s, q + r + s, version)
    if e.kind is Kind.RESERVED:
        if q > a:
            raise InvalidEvent(f"reserve {q} with {a} available (order {e.order_id})")
        return Level(a - q, r + q, s, level.total, version)
    if e.kind is Kind.RELEASED:
        if q > r:
            raise InvalidEvent(f"release {q} with {r} reserved (order {e.order_id})")
        return Level(a + q, r - q, s, level.total, version)
    if e.kind is Kind.COMMITTED:
        if q > r:
            raise InvalidEvent(f"commit {q} with {r} reserved (order {e.order_id})")
        return Level(a, r - q, s + q, level.total, version)
    if q > s:
        raise InvalidEvent(f"restock {q} with {s} sold (order {e.order_id})")
    return Level(a + q, r, s - q, level.total, version)


def fold(events: Iterable[Event], start: Level = EMPTY) -> Level:
    """`start` (a snapshot, or nothing) with `events` applied in order."""
    level = start
    for e in events:
        level = apply(level, e)
    return level


def snapshot_state(level: Level) -> str:
    """The stored form of a snapshot's level (its version and format are columns)."""
    return json.dumps({"available": level.available, "reserved": level.reserved,
                       "sold": level.sold, "total": level.total}, separators=(",", ":"))


def from_snapshot(state: str, version: int, fmt: int) -> Level | None:
    """The level a stored snapshot holds; None when it is of another format or does not
    hold a valid level (the stream is then replayed from its first event)."""
    if fmt != SNAPSHOT_FORMAT:
        return None
    try:
        doc = json.loads(state)
        level = Level(int(doc["available"]), int(doc["reserved"]), int(doc["sold"]),
                      int(doc["total"]), int(version))
    except (ValueError, KeyError, TypeError):
        return None
    if min(level.available, level.reserved, level.sold, level.version) < 0 or (
            level.available + level.reserved + level.sold != level.total):
        return None
    return level


def snapshot_due(before: int, after: int, every: int) -> bool:
    """An append that took the stream from version `before` to `after` crossed a multiple
    of `every` (0: never snapshot)."""
    return every > 0 and after // every > before // every

