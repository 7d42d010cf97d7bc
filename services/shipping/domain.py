"""Shipping rules: a shipment per confirmed order, with a random tracking number. Pure.

A shipment is created PENDING (tracking number assigned) and dispatched (SHIPPED) once its
dispatch time has come; until then the order's customer may still cancel it (CANCELLED,
never dispatched). A cancellation that overtakes order.confirmed is remembered, so the
late event creates the shipment CANCELLED.
"""

from __future__ import annotations

import enum
import re
import secrets
import string
from dataclasses import dataclass, replace

from services.common.errors import FailedPrecondition, InvalidArgument

CARRIER = "shop-post"
TRACKING_PREFIX = "SHP"
TRACKING_LEN = 12
_ALPHABET = string.ascii_uppercase + string.digits
_TRACKING = re.compile(rf"^{TRACKING_PREFIX}[A-Z0-9]{{{TRACKING_LEN}}}$")
MAX_ID_LEN = 128
# How long a shipment stays PENDING (cancellable) before it is handed to the carrier.
DEFAULT_DISPATCH_DELAY_S = 2.0


class Status(enum.StrEnum):
    LABEL_CREATED = "LABEL_CREATED"
    PENDING = "PENDING"
    SHIPPED = "SHIPPED"
    DELIVERED = "DELIVERED"
    CANCELLED = "CANCELLED"


# Handed to the carrier: a cancellation can no longer stop it.
DISPATCHED = frozenset({Status.SHIPPED, Status.DELIVERED})


@dataclass(frozen=True, slots=True)
class Shipment:
    order_id: str
    user_id: str
    tracking_number: str
    status: Status
    carrier: str
    created_at: float
    # When a PENDING shipment is dispatched (0: not scheduled, e.g. an old SHIPPED row).
    dispatch_at: float = 0.0


def new_tracking_number() -> str:
    """'SHP' + 12 upper-case letters/digits from a CSPRNG: unguessable, so a tracking
    number cannot be used to enumerate other people's parcels."""
    return TRACKING_PREFIX + "".join(secrets.choice(_ALPHABET) for _ in range(TRACKING_LEN))


def is_tracking_number(value: str) -> bool:
    return _TRACKING.match(value) is not None


def validate_order_id(order_id: str) -> str:
    order_id = order_id.strip()
    if not order_id:
        raise InvalidArgument("order_id is required")
    if len(order_id) > MAX_ID_LEN:
        raise InvalidArgument(f"order_id is longer than {MAX_ID_LEN} characters")
    return order_id


def validate_dispatch_delay(delay_s: float) -> float:
    if not 0 <= delay_s <= 86_400:
        raise ValueError(f"SHIPPING_DISPATCH_DELAY_S must be 0..86400 seconds, got {delay_s}")
    return delay_s


def plan_shipment(order_id: str, user_id: str, now: float, delay_s: float, *,
                  cancelled: bool = False, tracking_number: str = "") -> Shipment:
    """The shipment for a confirmed order: PENDING, dispatched `delay_s` from now; or
    CANCELLED at once when the order's cancellation arrived first."""
    if not order_id:
        raise InvalidArgument("order.confirmed without an order id")
    if not user_id:
        raise InvalidArgument(f"order {order_id} has no user id")
    return Shipment(
        order_id=order_id,
        user_id=user_id,
        tracking_number=tracking_number or new_tracking_number(),
        status=Status.CANCELLED if cancelled else Status.PENDING,
        carrier=CARRIER,
        created_at=now,
        dispatch_at=now + delay_s,
    )


def dispatch(shipment: Shipment) -> Shipment:
    """PENDING -> SHIPPED (the dispatcher only picks PENDING shipments that are due)."""
    if shipment.status is not Status.PENDING:
        raise FailedPrecondition(
            f"shipment for order {shipment.order_id} is {shipment.status.value}, not PENDING")
    return replace(shipment, status=Status.SHIPPED)


class CancelEffect(enum.Enum):
    NONE = "none"  # already cancelled (or remembered): nothing to write
    CANCEL = "cancel"  # PENDING -> CANCELLED
    REMEMBER = "remember"  # no shipment yet: record the cancellation for order.confirmed


def decide_cancel(order_id: str, existing: Shipment | None,
                  remembered: bool) -> CancelEffect:
    """What CancelShipment does; FailedPrecondition once the shipment was dispatched."""
    if existing is None:
        return CancelEffect.NONE if remembered else CancelEffect.REMEMBER
    if existing.status in DISPATCHED:
        raise FailedPrecondition(f"shipment for order {order_id} already shipped "
                                 f"({existing.tracking_number})")
    if existing.status is Status.CANCELLED:
        return CancelEffect.NONE
    return CancelEffect.CANCEL  # PENDING (or an old LABEL_CREATED, never handed over)
