"""Shipping rules: a shipment per confirmed order, with a random tracking number. Pure."""

from __future__ import annotations

import enum
import re
import secrets
import string
from dataclasses import dataclass

from services.common.errors import InvalidArgument

CARRIER = "shop-post"
TRACKING_PREFIX = "SHP"
TRACKING_LEN = 12
_ALPHABET = string.ascii_uppercase + string.digits
_TRACKING = re.compile(rf"^{TRACKING_PREFIX}[A-Z0-9]{{{TRACKING_LEN}}}$")
MAX_ID_LEN = 128


class Status(enum.StrEnum):
    LABEL_CREATED = "LABEL_CREATED"
    SHIPPED = "SHIPPED"
    DELIVERED = "DELIVERED"


@dataclass(frozen=True, slots=True)
class Shipment:
    order_id: str
    user_id: str
    tracking_number: str
    status: Status
    carrier: str
    created_at: float


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


def ship_order(order_id: str, user_id: str, now: float, tracking_number: str = "") -> Shipment:
    """The shipment for a confirmed order; shop hands it to the carrier at once."""
    if not order_id:
        raise InvalidArgument("order.confirmed without an order id")
    if not user_id:
        raise InvalidArgument(f"order {order_id} has no user id")
    return Shipment(
        order_id=order_id,
        user_id=user_id,
        tracking_number=tracking_number or new_tracking_number(),
        status=Status.SHIPPED,
        carrier=CARRIER,
        created_at=now,
    )
