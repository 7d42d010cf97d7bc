"""Orders and the order saga as pure rules: validation, pricing, the saga state machine.

Stdlib only. The saga is a small state machine: `advance(state, outcome)` says what the
next step is and, when the saga ends, which status the order ends in. The orchestrator
(saga.py) runs the steps and persists every transition.

Forward steps:   reserve_stock -> charge (the pivot) -> confirm (CommitStock + CONFIRMED)
Compensations:   refund -> release_stock -> CANCELLED (entered at refund or release_stock)

Before the charge succeeds every completed step is compensated; after it, confirm is
retried until it succeeds and never compensated (only a customer's cancel undoes it).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import enum
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from services.common.errors import FailedPrecondition, InvalidArgument, NotFound

MAX_LINES = 50
MAX_QUANTITY = 99
DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100
# Payment decides whether a token is valid; this only turns away what is not a token at all
# (so junk input writes nothing).
CARD_TOKEN_PREFIX = "tok_"
# The most one payment may take (payment's MAX_AMOUNT_CENTS): a dearer order is refused
# before anything is written, not reserved, then refused by Charge as a bad card.
MAX_TOTAL_CENTS = 10**12

REASON_OUT_OF_STOCK = "out of stock"
REASON_DECLINED = "payment declined"
REASON_INVALID_CARD = "invalid card token"
REASON_INVENTORY_DOWN = "inventory unavailable"
REASON_PAYMENT_DOWN = "payment unavailable"
REASON_CUSTOMER = "cancelled by customer"


class OrderStatus(enum.StrEnum):
    PENDING = "PENDING"
    CONFIRMED = "CONFIRMED"
    SHIPPED = "SHIPPED"
    CANCELLED = "CANCELLED"
    REQUIRES_ATTENTION = "REQUIRES_ATTENTION"


class Step(enum.StrEnum):
    RESERVE = "reserve_stock"
    CHARGE = "charge"
    CONFIRM = "confirm"
    REFUND = "refund"
    RELEASE = "release_stock"
    DONE = "done"


class SagaStatus(enum.StrEnum):
    RUNNING = "running"
    COMPENSATING = "compensating"
    DONE = "done"
    ATTENTION = "requires_attention"


class Outcome(enum.StrEnum):
    SUCCEEDED = "succeeded"
    # The downstream said no (business rule): out of stock, declined, already committed.
    REFUSED = "refused"
    # No answer (timeout, unavailable): the step may or may not have happened.
    UNKNOWN = "unknown"
    # Not attempted: the downstream's circuit breaker is open (it fails fast until its
    # reset timeout). Nothing happened; a compensation does not count it as an attempt.
    DEFERRED = "deferred"


ACTIVE = (SagaStatus.RUNNING, SagaStatus.COMPENSATING)
COMPENSATIONS = (Step.REFUND, Step.RELEASE)


@dataclass(frozen=True)
class Line:
    product_id: str
    quantity: int
    unit_price_cents: int = 0


@dataclass(frozen=True)
class Order:
    id: str
    user_id: str
    items: tuple[Line, ...]
    total_cents: int
    currency: str
    status: OrderStatus = OrderStatus.PENDING
    cancel_reason: str = ""
    create_time: float = 0.0
    update_time: float = 0.0
    tracking_number: str = ""
    from_cart: bool = False
    idempotency_key: str = ""


@dataclass(frozen=True)
class Limits:
    """Attempts before giving up on a step. Confirm has no limit: it is past the pivot."""

    reserve: int = 8
    charge: int = 8
    compensation: int = 8
    backoff_base_s: float = 0.1
    backoff_max_s: float = 5.0


@dataclass(frozen=True)
class SagaState:
    order_id: str
    step: Step = Step.RESERVE
    status: SagaStatus = SagaStatus.RUNNING
    # Failed attempts of the current step so far (resets when the step changes).
    attempt: int = 0
    charged: bool = False
    cancel_requested: bool = False
    reason: str = ""
    card_token: str = ""
    # Optimistic concurrency: every persisted change bumps it.
    version: int = 0

    @property
    def active(self) -> bool:
        return self.status in ACTIVE


@dataclass(frozen=True)
class Transition:
    state: SagaState
    # Set when the saga just ended: the status the order ends in.
    final_status: OrderStatus | None = None
    # Set when the same step must be tried again after this pause.
    retry_after_s: float | None = None
    # What the history records for the attempt ("skipped" for a refused release).
    label: str = ""


# --- validation and pricing -------------------------------------------------------------


def validate_card_token(token: str) -> str:
    token = token.strip()
    if not token:
        raise InvalidArgument("card_token is required")
    if not token.startswith(CARD_TOKEN_PREFIX) or len(token) > 200:
        raise InvalidArgument(f"{REASON_INVALID_CARD}: card_token must look like 'tok_...'")
    return token


def validate_lines(lines: Sequence[tuple[str, int]]) -> tuple[Line, ...]:
    """1..50 distinct products, each 1..99; raises InvalidArgument naming the bad line."""
    if not lines:
        raise InvalidArgument("an order needs at least one item")
    if len(lines) > MAX_LINES:
        raise InvalidArgument(f"an order has at most {MAX_LINES} lines, got {len(lines)}")
    seen: set[str] = set()
    out: list[Line] = []
    for i, (product_id, quantity) in enumerate(lines):
        pid = product_id.strip()
        if not pid:
            raise InvalidArgument(f"items[{i}].product_id is required")
        if not 1 <= quantity <= MAX_QUANTITY:
            raise InvalidArgument(
                f"items[{i}].quantity must be 1..{MAX_QUANTITY}, got {quantity}")
        if pid in seen:
            raise InvalidArgument(f"items[{i}]: product {pid} appears twice")
        seen.add(pid)
        out.append(Line(pid, quantity))
    return tuple(out)


def price_lines(lines: Sequence[Line],
                catalogue: Mapping[str, tuple[int, str]]) -> tuple[tuple[Line, ...], int, str]:
    """Lines priced from `catalogue` (product id -> (price cents, currency)).

    NotFound names every unknown product; one currency per order."""
    missing = [ln.product_id for ln in lines if ln.product_id not in catalogue]
    if missing:
        raise NotFound(f"product not found: {', '.join(missing)}")
    currencies = {catalogue[ln.product_id][1] for ln in lines}
    if len(currencies) != 1:
        raise InvalidArgument(
            f"an order must use one currency, got {', '.join(sorted(currencies))}")
    priced = tuple(
        Line(ln.product_id, ln.quantity, catalogue[ln.product_id][0]) for ln in lines)
    total = sum(ln.quantity * ln.unit_price_cents for ln in priced)
    if total > MAX_TOTAL_CENTS:
        raise InvalidArgument(f"an order totals at most {MAX_TOTAL_CENTS} cents, got {total}")
    return priced, total, currencies.pop()


# --- pagination ---------------------------------------------------------------------------


def page_size(requested: int) -> int:
    if requested < 0:
        raise InvalidArgument("page_size must not be negative")
    return DEFAULT_PAGE_SIZE if requested == 0 else min(requested, MAX_PAGE_SIZE)


def encode_page_token(create_time: float, order_id: str) -> str:
    raw = f"{create_time!r}|{order_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_page_token(token: str) -> tuple[float, str] | None:
    """None for "" (first page); InvalidArgument for anything not made by encode_page_token."""
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        ts, _, order_id = raw.partition("|")
        if not order_id:
            raise ValueError(raw)
        return float(ts), order_id
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidArgument("page_token is not valid") from None


# --- the saga state machine ----------------------------------------------------------------


def backoff_s(attempt: int, limits: Limits, *, jitter: bool = True) -> float:
    """Exponential back-off for the n-th failed attempt (1-based), capped, with jitter."""
    base = min(limits.backoff_max_s, limits.backoff_base_s * (2 ** max(0, attempt - 1)))
    return random.uniform(base / 2, base) if jitter else base


def _to(state: SagaState, step: Step, **changes: Any) -> SagaState:
    return dataclasses.replace(state, step=step, attempt=0, **changes)


def _compensate(state: SagaState, first: Step, reason: str) -> SagaState:
    return _to(state, first, status=SagaStatus.COMPENSATING,
               reason=state.reason or reason, card_token="")


def _end(state: SagaState, status: SagaStatus) -> SagaState:
    return _to(state, Step.DONE, status=status, card_token="")


def apply_cancel_request(state: SagaState) -> SagaState:
    """A customer's cancel of a saga still running forward: compensate from where it is,
    including the step that may be in flight (both compensations are idempotent, and an
    unknown order leaves a tombstone that refuses a late reserve or charge)."""
    if state.status is not SagaStatus.RUNNING or not state.cancel_requested:
        return state
    if state.step is Step.RESERVE:
        return _compensate(state, Step.RELEASE, REASON_CUSTOMER)
    return _compensate(state, Step.REFUND, REASON_CUSTOMER)


def cancel_confirmed(state: SagaState, reason: str) -> SagaState:
    """A confirmed order cancelled by its customer: refund, then try to release (inventory
    refuses to release a committed reservation: the stock stays sold, recorded as skipped)."""
    return dataclasses.replace(
        _compensate(dataclasses.replace(state, reason=""), Step.REFUND,
                    reason or REASON_CUSTOMER),
        cancel_requested=True)


def _failed_attempt(state: SagaState, limit: int | None, limits: Limits,
                    give_up: Transition | None) -> Transition:
    attempt = state.attempt + 1
    if limit is not None and attempt >= limit and give_up is not None:
        return give_up
    nxt = dataclasses.replace(state, attempt=attempt)
    return Transition(nxt, retry_after_s=backoff_s(attempt, limits))


def advance(state: SagaState, outcome: Outcome, error: str = "",
            limits: Limits = Limits()) -> Transition:
    """The saga after one attempt of `state.step` ended with `outcome`."""
    step = state.step
    if outcome is Outcome.DEFERRED:
        if step in COMPENSATIONS:
            # An open breaker outlasts the compensation's attempts (30 s against ~11 s by
            # default): waiting for it must not end in REQUIRES_ATTENTION.
            wait = random.uniform(limits.backoff_max_s / 2, limits.backoff_max_s)
            return Transition(state, retry_after_s=wait)
        outcome = Outcome.UNKNOWN  # forward steps give up as before (then compensate)
    if step is Step.RESERVE:
        if outcome is Outcome.SUCCEEDED:
            return Transition(_to(state, Step.CHARGE))
        if outcome is Outcome.REFUSED:
            # Nothing was reserved: nothing to compensate.
            reason = f"{REASON_OUT_OF_STOCK}: {error}" if error else REASON_OUT_OF_STOCK
            done = _end(dataclasses.replace(state, reason=reason), SagaStatus.DONE)
            return Transition(done, final_status=OrderStatus.CANCELLED)
        give_up = Transition(_compensate(state, Step.RELEASE, REASON_INVENTORY_DOWN))
        return _failed_attempt(state, limits.reserve, limits, give_up)
    if step is Step.CHARGE:
        if outcome is Outcome.SUCCEEDED:
            return Transition(_to(state, Step.CONFIRM, charged=True, card_token=""))
        if outcome is Outcome.REFUSED:
            return Transition(_compensate(state, Step.RELEASE, refusal_reason(error)))
        # The charge may have happened: a refund (or its tombstone) settles that.
        give_up = Transition(_compensate(state, Step.REFUND, REASON_PAYMENT_DOWN))
        return _failed_attempt(state, limits.charge, limits, give_up)
    if step is Step.CONFIRM:
        if outcome is Outcome.SUCCEEDED:
            return Transition(_end(state, SagaStatus.DONE), final_status=OrderStatus.CONFIRMED)
        # Past the pivot: retried until it succeeds, never compensated.
        return _failed_attempt(state, None, limits, None)
    if step in COMPENSATIONS:
        if outcome is Outcome.SUCCEEDED or (step is Step.RELEASE and outcome is Outcome.REFUSED):
            # A refused release means the stock was already committed (sold): nothing to undo.
            label = "skipped" if outcome is Outcome.REFUSED else ""
            if step is Step.REFUND:
                return Transition(_to(state, Step.RELEASE), label=label)
            return Transition(_end(state, SagaStatus.DONE),
                              final_status=OrderStatus.CANCELLED, label=label)
        attention = Transition(_end(state, SagaStatus.ATTENTION),
                               final_status=OrderStatus.REQUIRES_ATTENTION)
        return _failed_attempt(state, limits.compensation, limits, attention)
    raise ValueError(f"saga of order {state.order_id} has ended; nothing to advance")


def refusal_reason(error: str) -> str:
    """The cancel reason for a refused charge: declined, or a token payment does not know."""
    if error.startswith(REASON_INVALID_CARD):
        return error
    return REASON_DECLINED


def is_invalid_card(reason: str) -> bool:
    return reason.startswith(REASON_INVALID_CARD)


def check_cancellable(order: Order) -> None:
    """Raises when a customer may not cancel the order; CANCELLED is an idempotent no-op."""
    if order.status is OrderStatus.SHIPPED:
        raise FailedPrecondition("order already shipped")
    if order.status is OrderStatus.REQUIRES_ATTENTION:
        raise FailedPrecondition("order requires manual attention; an operator must settle it")
