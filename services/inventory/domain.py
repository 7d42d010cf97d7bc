"""Inventory rules: validation, all-or-nothing reservations and their state transitions.

Pure (stdlib only). The store reads what it needs inside its transaction, asks the
`decide_*` functions what to do, and writes what they return. Per product the stock
moves only between available -> reserved -> sold (or reserved -> available, or, for a
confirmed order cancelled before it shipped, sold -> available), so
available + reserved + sold stays equal to the stock ever set.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from services.common.errors import FailedPrecondition, InvalidArgument, NotFound
from services.inventory.ledger import Kind

MAX_ID_LEN = 128
MAX_ITEMS = 100
MAX_QUANTITY = 10_000
# Far below int32 (the proto's stock fields), so available + reserved + sold always fits.
MAX_STOCK = 1_000_000_000

ALREADY_RELEASED = "reservation already released"


class Status(enum.StrEnum):
    RESERVED = "RESERVED"
    # Refused for lack of stock; kept so a repeat is refused the same way.
    REJECTED = "REJECTED"
    # Released, or a tombstone for an order released before (or without) any reservation.
    RELEASED = "RELEASED"
    COMMITTED = "COMMITTED"
    # A confirmed order's units returned to available (cancelled before dispatch): sold
    # ones, or ones still reserved when the cancel came before the commit.
    RESTOCKED = "RESTOCKED"


@dataclass(frozen=True, slots=True)
class Line:
    product_id: str
    quantity: int


@dataclass(frozen=True, slots=True)
class Stock:
    product_id: str
    available: int
    reserved: int
    sold: int


@dataclass(frozen=True, slots=True)
class Reservation:
    order_id: str
    status: Status
    items: tuple[Line, ...]
    reason: str = ""


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    product_id: str
    version: int
    kind: Kind
    quantity: int
    order_id: str
    at: float
    stock: Stock


@dataclass(frozen=True, slots=True)
class HistoryPage:
    entries: list[HistoryEntry]  # newest first
    next_before: int | None  # the version the next page starts below; None: last page


class Effect(enum.Enum):
    """What a transition does to the stock and the stored reservation."""

    NONE = "none"  # a repeat: nothing to write
    RETURN = "return"  # reserved -> available, status RELEASED (or RESTOCKED, see below)
    SELL = "sell"  # reserved -> sold, status COMMITTED
    RESTOCK = "restock"  # sold -> available, status RESTOCKED
    TOMBSTONE = "tombstone"  # insert a RELEASED row without items


@dataclass(frozen=True, slots=True)
class Transition:
    reservation: Reservation
    effect: Effect


def _check_id(value: str, field: str) -> str:
    if not value:
        raise InvalidArgument(f"{field} is required")
    if len(value) > MAX_ID_LEN:
        raise InvalidArgument(f"{field} is longer than {MAX_ID_LEN} characters")
    return value


def validate_product_id(product_id: str) -> str:
    return _check_id(product_id, "product_id")


def validate_order_id(order_id: str) -> str:
    return _check_id(order_id, "order_id")


def validate_set_stock(product_id: str, available: int) -> tuple[str, int]:
    validate_product_id(product_id)
    if not 0 <= available <= MAX_STOCK:
        raise InvalidArgument(f"available must be between 0 and {MAX_STOCK}, got {available}")
    return product_id, available


def validate_reserve(order_id: str, items: Iterable[tuple[str, int]]) -> tuple[Line, ...]:
    """The request's lines, checked, with duplicate products merged, sorted by product id
    (a stable order for the stored reservation and the event)."""
    validate_order_id(order_id)
    merged: dict[str, int] = {}
    for count, (product_id, quantity) in enumerate(items, start=1):
        if count > MAX_ITEMS:
            raise InvalidArgument(f"a reservation holds at most {MAX_ITEMS} items")
        validate_product_id(product_id)
        if not 1 <= quantity <= MAX_QUANTITY:
            raise InvalidArgument(
                f"quantity for {product_id} must be between 1 and {MAX_QUANTITY}, got {quantity}")
        merged[product_id] = merged.get(product_id, 0) + quantity
    if not merged:
        raise InvalidArgument("items must not be empty")
    return tuple(Line(pid, qty) for pid, qty in sorted(merged.items()))


def outcome(reservation: Reservation) -> Reservation:
    """What ReserveStock answers for a stored reservation: it, or its refusal again."""
    if reservation.status is Status.REJECTED:
        raise FailedPrecondition(reservation.reason)
    if reservation.status in (Status.RELEASED, Status.RESTOCKED):
        raise FailedPrecondition(ALREADY_RELEASED)
    return reservation


def decide_reserve(order_id: str, lines: tuple[Line, ...],
                   available: Mapping[str, int]) -> Reservation:
    """A first reservation: RESERVED when every line fits, else REJECTED naming the first
    short line (nothing is reserved then). `available` holds the products that exist."""
    for line in lines:
        if line.product_id not in available:
            raise NotFound(f"product {line.product_id} not found")
    for line in lines:
        have = available[line.product_id]
        if line.quantity > have:
            reason = (f"insufficient stock for {line.product_id}: "
                      f"requested {line.quantity}, available {have}")
            return Reservation(order_id, Status.REJECTED, lines, reason)
    return Reservation(order_id, Status.RESERVED, lines)


def decide_release(order_id: str, existing: Reservation | None) -> Transition:
    if existing is None:
        # Compensation may overtake a Reserve still in flight: the tombstone makes that
        # late Reserve refuse instead of holding stock for a cancelled order.
        return Transition(Reservation(order_id, Status.RELEASED, ()), Effect.TOMBSTONE)
    if existing.status is Status.RESERVED:
        released = Reservation(order_id, Status.RELEASED, existing.items, existing.reason)
        return Transition(released, Effect.RETURN)
    if existing.status in (Status.COMMITTED, Status.RESTOCKED):
        raise FailedPrecondition(f"reservation for order {order_id} is committed: "
                                 "sold stock cannot be released (restock it)")
    # RELEASED again, or REJECTED (nothing held; it already refuses any later Reserve).
    return Transition(existing, Effect.NONE)


def decide_commit(order_id: str, existing: Reservation | None) -> Transition:
    if existing is None:
        raise FailedPrecondition(f"no reservation for order {order_id}")
    if existing.status is Status.RESERVED:
        committed = Reservation(order_id, Status.COMMITTED, existing.items, existing.reason)
        return Transition(committed, Effect.SELL)
    if existing.status is Status.COMMITTED:
        return Transition(existing, Effect.NONE)
    if existing.status is Status.RESTOCKED:
        raise FailedPrecondition(f"reservation for order {order_id} was restocked")
    if existing.status is Status.REJECTED:
        raise FailedPrecondition(
            f"reservation for order {order_id} was rejected: {existing.reason}")
    raise FailedPrecondition(f"reservation for order {order_id} was released")


def decide_restock(order_id: str, existing: Reservation | None) -> Transition:
    """A confirmed order's units back to available (its order was cancelled before it
    shipped); a repeat changes nothing. The commit follows the confirmation as an event,
    so a cancel can come first: units still reserved go back from `reserved`, and the
    RESTOCKED status makes the late commit change nothing. Stock never held cannot be
    restocked."""
    if existing is not None and existing.status in (Status.COMMITTED, Status.RESERVED):
        restocked = Reservation(order_id, Status.RESTOCKED, existing.items, existing.reason)
        held = existing.status is Status.RESERVED
        return Transition(restocked, Effect.RETURN if held else Effect.RESTOCK)
    if existing is not None and existing.status is Status.RESTOCKED:
        return Transition(existing, Effect.NONE)
    what = "no reservation" if existing is None else f"reservation {existing.status.value}"
    raise FailedPrecondition(f"order {order_id} has no committed stock to restock ({what})")


def decide_confirmed_commit(order_id: str, existing: Reservation | None) -> Transition:
    """The commit that follows an order's confirmation (its `order.confirmed` event): the
    reserved units become sold. Already committed, or restocked by a cancel that came
    first: nothing to do. Anything else is not the state a confirmed order leaves, and is
    refused as CommitStock refuses it."""
    if existing is not None and existing.status is Status.RESTOCKED:
        return Transition(existing, Effect.NONE)
    return decide_commit(order_id, existing)


# --- the ledger's queries: time travel and history paging --------------------------------

DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100


def validate_as_of(seconds: int, nanos: int) -> float:
    """A requested time as seconds since the epoch (a valid timestamp). A time still to
    come is answered with what is known now: the stock after every event so far."""
    if not 0 <= nanos <= 999_999_999:
        raise InvalidArgument(f"as_of.nanos must be between 0 and 999999999, got {nanos}")
    # Timestamp's own range: 0001-01-01 to 9999-12-31.
    if not -62_135_596_800 <= seconds <= 253_402_300_799:
        raise InvalidArgument(f"as_of.seconds {seconds} is outside 0001-01-01..9999-12-31")
    return seconds + nanos / 1e9


def page_size(requested: int) -> int:
    if requested < 0:
        raise InvalidArgument(f"page_size must not be negative, got {requested}")
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def encode_history_token(product_id: str, before_version: int) -> str:
    raw = json.dumps([product_id, before_version], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_history_token(token: str, product_id: str) -> int | None:
    """The version a page of `product_id`'s history starts below; None for "" (the newest
    page). InvalidArgument for a token not made by encode_history_token for this product."""
    if not token:
        return None
    try:
        pid, before = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (ValueError, TypeError, binascii.Error):
        raise InvalidArgument("page_token is not valid") from None
    if not isinstance(before, int) or isinstance(before, bool) or before < 2:
        raise InvalidArgument("page_token is not valid")
    if pid != product_id:
        raise InvalidArgument("page_token was made for a different product_id")
    return before
