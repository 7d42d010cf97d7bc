"""Payment rules: validation, the card outcome, and what a Charge or Refund does to a payment.

Pure (stdlib only). The store asks `decide_charge` / `decide_refund` inside its transaction,
with the row it found for the order, and writes what they return.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, replace

from services.common.errors import FailedPrecondition, InvalidArgument, NotFound

MAX_ID_LEN = 128
# Stays far below int64 so sums of many payments never overflow.
MAX_AMOUNT_CENTS = 10**12
_CURRENCY = re.compile(r"^[A-Za-z]{3}$")

DECLINE_REASON = "card declined"


class Status(enum.StrEnum):
    CHARGED = "CHARGED"
    DECLINED = "DECLINED"
    REFUNDED = "REFUNDED"
    # No payment was ever made: a Refund (compensation) arrived first. The row keeps the
    # order_id taken, so a late Charge for a cancelled order can never go through.
    VOID = "VOID"


class CardOutcome(enum.Enum):
    APPROVED = "approved"
    DECLINED = "declined"


# Test tokens in the style of well-known payment APIs.
CARD_TOKENS: dict[str, CardOutcome] = {
    "tok_visa": CardOutcome.APPROVED,
    "tok_chargeDeclined": CardOutcome.DECLINED,
}


@dataclass(frozen=True, slots=True)
class ChargeRequest:
    order_id: str
    user_id: str
    amount_cents: int
    currency: str
    card_token: str


@dataclass(frozen=True, slots=True)
class Payment:
    order_id: str
    user_id: str
    status: Status
    amount_cents: int
    refunded_cents: int
    currency: str
    decline_reason: str
    created_at: float
    updated_at: float


def validate_order_id(order_id: str) -> str:
    order_id = order_id.strip()
    if not order_id:
        raise InvalidArgument("order_id is required")
    if len(order_id) > MAX_ID_LEN:
        raise InvalidArgument(f"order_id is longer than {MAX_ID_LEN} characters")
    return order_id


def validate_charge(
    order_id: str, user_id: str, amount_cents: int, currency: str, card_token: str
) -> ChargeRequest:
    """A checked request, or InvalidArgument naming the first bad field."""
    order_id = validate_order_id(order_id)
    user_id = user_id.strip()
    if not user_id:
        raise InvalidArgument("user_id is required")
    if len(user_id) > MAX_ID_LEN:
        raise InvalidArgument(f"user_id is longer than {MAX_ID_LEN} characters")
    if amount_cents <= 0:
        raise InvalidArgument("amount_cents must be positive")
    if amount_cents > MAX_AMOUNT_CENTS:
        raise InvalidArgument(f"amount_cents must be at most {MAX_AMOUNT_CENTS}")
    if not _CURRENCY.match(currency):
        raise InvalidArgument("currency must be a 3-letter ISO code, e.g. USD")
    if not card_token:
        raise InvalidArgument("card_token is required")
    if card_token not in CARD_TOKENS:
        raise InvalidArgument("unknown card token")
    return ChargeRequest(order_id, user_id, amount_cents, currency.upper(), card_token)


@dataclass(frozen=True, slots=True)
class ChargeDecision:
    """What a Charge does: `payment` is the result; `is_new` means write it and its event."""

    payment: Payment
    is_new: bool


def decide_charge(req: ChargeRequest, existing: Payment | None, now: float) -> ChargeDecision:
    """Charge once per order. A repeat with the same terms replays the first outcome;
    anything else about an order already seen is refused."""
    if existing is None:
        approved = CARD_TOKENS[req.card_token] is CardOutcome.APPROVED
        payment = Payment(
            order_id=req.order_id,
            user_id=req.user_id,
            status=Status.CHARGED if approved else Status.DECLINED,
            amount_cents=req.amount_cents,
            refunded_cents=0,
            currency=req.currency,
            decline_reason="" if approved else DECLINE_REASON,
            created_at=now,
            updated_at=now,
        )
        return ChargeDecision(payment, is_new=True)
    if existing.status in (Status.VOID, Status.REFUNDED):
        raise FailedPrecondition(f"order {req.order_id} was refunded/cancelled")
    if existing.amount_cents != req.amount_cents or existing.currency != req.currency:
        raise FailedPrecondition(f"order {req.order_id} already charged with a different amount")
    return ChargeDecision(existing, is_new=False)


def raise_if_declined(payment: Payment) -> None:
    """A declined charge answers FAILED_PRECONDITION, the first time and on every repeat."""
    if payment.status is Status.DECLINED:
        raise FailedPrecondition(payment.decline_reason or DECLINE_REASON)


@dataclass(frozen=True, slots=True)
class RefundDecision:
    """`changed`: write `payment`; `emit`: also publish payment.refunded."""

    payment: Payment
    changed: bool
    emit: bool


def decide_refund(
    order_id: str, existing: Payment | None, now: float, caller: str = ""
) -> RefundDecision:
    """Refund is the saga's compensation, so it always succeeds and is idempotent:
    CHARGED -> REFUNDED (one event); REFUNDED, DECLINED, VOID -> unchanged;
    no payment -> a VOID tombstone that refuses a late Charge.

    `caller` is the end user behind the call (x-user-id), "" for internal callers;
    another user's payment is reported as missing."""
    if caller and existing is not None and existing.user_id and existing.user_id != caller:
        raise NotFound(f"payment for order {order_id} not found")
    if existing is None:
        tomb = Payment(order_id, "", Status.VOID, 0, 0, "", "", now, now)
        return RefundDecision(tomb, changed=True, emit=False)
    if existing.status is Status.CHARGED:
        refunded = replace(
            existing,
            status=Status.REFUNDED,
            refunded_cents=existing.amount_cents,
            updated_at=now,
        )
        return RefundDecision(refunded, changed=True, emit=True)
    return RefundDecision(existing, changed=False, emit=False)
