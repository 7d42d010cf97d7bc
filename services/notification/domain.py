"""Notification rules: the message each domain event becomes, paging, ownership. Pure."""

from __future__ import annotations

import base64
import binascii
import enum
from dataclasses import dataclass

from services.common.errors import InvalidArgument, NotFound
from services.notification.delivery import DeliveryStatus

DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100
MAX_ID_LEN = 128

# ISO 4217 minor units that are not 2; anything else is shown with 2 decimals.
_MINOR_UNITS: dict[str, int] = {
    "JPY": 0, "KRW": 0, "VND": 0, "CLP": 0, "ISK": 0, "HUF": 0,
    "BHD": 3, "KWD": 3, "OMR": 3, "JOD": 3, "TND": 3,
}


class Kind(enum.StrEnum):
    WELCOME = "WELCOME"
    RECEIPT = "RECEIPT"
    PAYMENT_FAILED = "PAYMENT_FAILED"
    ORDER_CONFIRMED = "ORDER_CONFIRMED"
    ORDER_CANCELLED = "ORDER_CANCELLED"
    SHIPPED = "SHIPPED"
    REFUND = "REFUND"


@dataclass(frozen=True, slots=True)
class Draft:
    """A notification about to be stored: who gets it and what it says."""

    user_id: str
    kind: Kind
    subject: str
    body: str


@dataclass(frozen=True, slots=True)
class Notification:
    id: str
    user_id: str
    kind: Kind
    subject: str
    body: str
    read: bool
    created_at: float
    event_id: str
    # The email of this notification, and why it failed when it did.
    delivery: DeliveryStatus = DeliveryStatus.NONE
    delivery_error: str = ""


def format_money(cents: int, currency: str) -> str:
    """1234, "USD" -> "12.34 USD"; exact integer arithmetic, never a float."""
    currency = currency.upper() or "USD"
    digits = _MINOR_UNITS.get(currency, 2)
    sign = "-" if cents < 0 else ""
    whole, frac = divmod(abs(cents), 10**digits)
    amount = f"{whole:,}" if digits == 0 else f"{whole:,}.{frac:0{digits}d}"
    return f"{sign}{amount} {currency}"


def _need(user_id: str, what: str) -> str:
    # An event without a recipient cannot become a notification; the consumer dead-letters it.
    if not user_id:
        raise InvalidArgument(f"{what} event has no user id")
    return user_id


def welcome(user_id: str, name: str) -> Draft:
    who = name.strip() or "there"
    return Draft(_need(user_id, "user.created"), Kind.WELCOME, f"Welcome to shop, {who}",
                 f"Welcome to shop, {who}! Your account is ready; happy shopping.")


def receipt(user_id: str, order_id: str, amount_cents: int, currency: str) -> Draft:
    amount = format_money(amount_cents, currency)
    return Draft(_need(user_id, "payment.completed"), Kind.RECEIPT,
                 f"Receipt for order {order_id}",
                 f"We charged {amount} for order {order_id}. Thank you for your purchase.")


def payment_failed(user_id: str, order_id: str, amount_cents: int, currency: str,
                   reason: str) -> Draft:
    amount = format_money(amount_cents, currency)
    why = reason or "the payment was refused"
    return Draft(_need(user_id, "payment.failed"), Kind.PAYMENT_FAILED,
                 f"Payment failed for order {order_id}",
                 f"We could not charge {amount} for order {order_id}: {why}.")


def refund(user_id: str, order_id: str, refunded_cents: int, currency: str) -> Draft:
    amount = format_money(refunded_cents, currency)
    return Draft(_need(user_id, "payment.refunded"), Kind.REFUND,
                 f"Refund for order {order_id}",
                 f"We refunded {amount} for order {order_id}.")


def order_confirmed(user_id: str, order_id: str, total_cents: int, currency: str) -> Draft:
    amount = format_money(total_cents, currency)
    return Draft(_need(user_id, "order.confirmed"), Kind.ORDER_CONFIRMED,
                 f"Order {order_id} confirmed",
                 f"Your order {order_id} of {amount} is confirmed; we will ship it soon.")


def order_cancelled(user_id: str, order_id: str, reason: str) -> Draft:
    why = reason or "no reason given"
    return Draft(_need(user_id, "order.cancelled"), Kind.ORDER_CANCELLED,
                 f"Order {order_id} cancelled",
                 f"Your order {order_id} was cancelled: {why}.")


def shipped(user_id: str, order_id: str, tracking_number: str, carrier: str) -> Draft:
    via = f" with {carrier}" if carrier else ""
    return Draft(_need(user_id, "order.shipped"), Kind.SHIPPED,
                 f"Order {order_id} shipped",
                 f"Your order {order_id} has shipped{via}. Tracking number: {tracking_number}.")


def page_size(requested: int) -> int:
    """AIP-158: 0 means the default, larger than the maximum is capped, negative is wrong."""
    if requested < 0:
        raise InvalidArgument("page_size must not be negative")
    if requested == 0:
        return DEFAULT_PAGE_SIZE
    return min(requested, MAX_PAGE_SIZE)


# Tokens are opaque to callers; inside they hold the listing filter and the last row's
# sequence number, so a token is never replayed against a different filter.
_TOKEN_VERSION = "n1"


def encode_page_token(last_seq: int, unread_only: bool) -> str:
    raw = f"{_TOKEN_VERSION}:{int(unread_only)}:{last_seq}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_page_token(token: str, unread_only: bool) -> int | None:
    """The sequence number to continue below, None for the first page."""
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        version, flag, seq = raw.split(":")
        if version != _TOKEN_VERSION or flag not in ("0", "1"):
            raise ValueError(version)
        last = int(seq)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidArgument("invalid page_token") from None
    if flag != str(int(unread_only)):
        raise InvalidArgument("page_token was made for a different unread_only filter")
    if last <= 0:
        raise InvalidArgument("invalid page_token")
    return last


def validate_id(notification_id: str) -> str:
    notification_id = notification_id.strip()
    if not notification_id:
        raise InvalidArgument("id is required")
    if len(notification_id) > MAX_ID_LEN:
        raise InvalidArgument(f"id is longer than {MAX_ID_LEN} characters")
    return notification_id


def check_owner(found: Notification | None, notification_id: str, user_id: str) -> Notification:
    """Another user's notification is reported exactly like a missing one."""
    if found is None or found.user_id != user_id:
        raise NotFound(f"notification {notification_id} not found")
    return found
