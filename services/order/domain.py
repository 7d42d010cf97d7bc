"""Orders and the order saga as pure rules: validation, pricing, the saga state machine.

Stdlib only. The saga is a small state machine: `advance(state, outcome)` says what the
next step is and, when the saga ends, which status the order ends in. The orchestrator
(saga.py) runs the steps and persists every transition.

Forward steps:   reserve_stock -> charge (the pivot) -> confirm (CommitStock + CONFIRMED)
Compensations:   refund -> release_stock -> CANCELLED (entered at refund or release_stock)
Cancelling a confirmed order (the cancellation saga):
                 cancel_shipment -> refund -> restock -> CANCELLED
                 (a refused cancel_shipment: already dispatched, the order ends SHIPPED)

Before the charge succeeds every completed step is compensated; after it, confirm is
retried until it succeeds and never compensated (only a customer's cancel undoes it).
A step whose outcome was unknown at least once is compensated even when a later attempt
is refused (the unknown attempt may have taken effect; compensations are idempotent).
A compensation whose downstream is merely unwell waits with back-off without using up
its attempts; one that keeps failing otherwise ends in REQUIRES_ATTENTION, from which
`retry_attention` resumes it.
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
REASON_COMMIT_REFUSED = "stock commit refused"
REASON_NOT_COMMITTED = "restock refused"
REASON_ALREADY_SHIPPED = "order already shipped"


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
    CANCEL_SHIPMENT = "cancel_shipment"
    RESTOCK = "restock"
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
    # An answer that is not a known refusal (UNIMPLEMENTED, NOT_FOUND, PERMISSION_DENIED,
    # ...): the step may or may not have happened; retried, and it uses up attempts.
    UNKNOWN = "unknown"
    # The downstream is merely unwell (UNAVAILABLE, DEADLINE_EXCEEDED, ...): the step may
    # or may not have happened. A compensation waits for it without using up attempts.
    UNWELL = "unwell"
    # Not attempted: the downstream's circuit breaker is open (it fails fast until its
    # reset timeout). Nothing happened; a compensation does not count it as an attempt.
    DEFERRED = "deferred"


class Refusal(enum.StrEnum):
    """Why a downstream said no, as the saga remembers it (the reply's code, typed)."""

    NONE = ""
    OUT_OF_STOCK = "out_of_stock"  # reserve
    DECLINED = "declined"  # charge: the card was declined
    INVALID_CARD = "invalid_card"  # charge: payment does not know the token
    COMMITTED = "committed"  # release: the stock is already sold (restock it instead)
    COMMIT_REFUSED = "commit_refused"  # confirm: inventory will not commit the reservation
    ALREADY_SHIPPED = "already_shipped"  # cancel_shipment: dispatched already
    NOT_COMMITTED = "not_committed"  # restock: nothing sold to give back


ACTIVE = (SagaStatus.RUNNING, SagaStatus.COMPENSATING)
COMPENSATIONS = (Step.REFUND, Step.RELEASE, Step.CANCEL_SHIPMENT, Step.RESTOCK)
# A refusal whose kind the port did not say: what the step's refusal usually means.
_DEFAULT_REFUSAL = {
    Step.RESERVE: Refusal.OUT_OF_STOCK, Step.CHARGE: Refusal.DECLINED,
    Step.CONFIRM: Refusal.COMMIT_REFUSED, Step.RELEASE: Refusal.COMMITTED,
    Step.CANCEL_SHIPMENT: Refusal.ALREADY_SHIPPED, Step.RESTOCK: Refusal.NOT_COMMITTED,
}
# Outcomes that leave the step's effect in doubt (a refusal later must still compensate).
_UNCERTAIN = (Outcome.UNKNOWN, Outcome.UNWELL)


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
    # The stock is committed (sold): the order was confirmed; undone by restock.
    committed: bool = False
    # An attempt of the current step had an unknown outcome (resets with the step).
    uncertain: bool = False
    # Waits of the current step for an unwell downstream (back-off only, not attempts).
    waits: int = 0
    # The refusal that decided the saga's end (CreateOrder answers by it).
    refusal: Refusal = Refusal.NONE
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
    return dataclasses.replace(state, step=step, attempt=0, uncertain=False, waits=0,
                               **changes)


def _compensate(state: SagaState, first: Step, reason: str,
                refusal: Refusal = Refusal.NONE) -> SagaState:
    return _to(state, first, status=SagaStatus.COMPENSATING, reason=state.reason or reason,
               card_token="", refusal=state.refusal or refusal)


def _end(state: SagaState, status: SagaStatus) -> SagaState:
    return _to(state, Step.DONE, status=status, card_token="")


def _attention(state: SagaState, reason: str = "",
               refusal: Refusal = Refusal.NONE) -> Transition:
    """The saga stops at its step (kept, so an operator's retry resumes it there)."""
    stuck = dataclasses.replace(state, status=SagaStatus.ATTENTION, card_token="",
                                reason=state.reason or reason,
                                refusal=refusal or state.refusal)
    return Transition(stuck, final_status=OrderStatus.REQUIRES_ATTENTION)


def apply_cancel_request(state: SagaState) -> SagaState:
    """A customer's cancel of a saga still running forward: compensate from where it is,
    including the step that may be in flight (both compensations are idempotent, and an
    unknown order leaves a tombstone that refuses a late reserve or charge; a commit that
    did happen makes the release refuse, and the units are restocked instead)."""
    if state.status is not SagaStatus.RUNNING or not state.cancel_requested:
        return state
    if state.step is Step.RESERVE:
        return _compensate(state, Step.RELEASE, REASON_CUSTOMER)
    return _compensate(state, Step.REFUND, REASON_CUSTOMER)


def cancel_confirmed(state: SagaState, reason: str) -> SagaState:
    """A confirmed order cancelled by its customer: the cancellation saga (cancel the
    shipment, then refund, then restock the committed units)."""
    return dataclasses.replace(
        _to(state, Step.CANCEL_SHIPMENT, status=SagaStatus.COMPENSATING,
            reason=reason or REASON_CUSTOMER, card_token="", refusal=Refusal.NONE),
        cancel_requested=True, committed=True)


def retry_attention(state: SagaState) -> SagaState:
    """An operator's retry of a saga in REQUIRES_ATTENTION: the step that gave up, with
    fresh attempts. FailedPrecondition for a saga in any other state."""
    if state.status is not SagaStatus.ATTENTION:
        raise FailedPrecondition(
            f"saga of order {state.order_id} is {state.status.value}, not requires_attention")
    step = state.step
    if step is Step.DONE:
        # Stopped before the step was kept: start the compensations again (idempotent).
        step = Step.REFUND if state.charged else Step.RELEASE
    status = SagaStatus.RUNNING if step is Step.CONFIRM else SagaStatus.COMPENSATING
    return _to(state, step, status=status)


def status_while_running(state: SagaState) -> OrderStatus:
    """The order's status while its saga runs again (after an operator's retry)."""
    return OrderStatus.CONFIRMED if state.committed else OrderStatus.PENDING


def _failed_attempt(state: SagaState, limit: int | None, limits: Limits,
                    give_up: Transition | None, outcome: Outcome) -> Transition:
    attempt = state.attempt + 1
    uncertain = state.uncertain or outcome in _UNCERTAIN
    if limit is not None and attempt >= limit and give_up is not None:
        return give_up
    nxt = dataclasses.replace(state, attempt=attempt, uncertain=uncertain)
    return Transition(nxt, retry_after_s=backoff_s(attempt, limits))


def _wait(state: SagaState, limits: Limits) -> Transition:
    """A compensation's downstream is unwell: wait (growing back-off), no attempt used."""
    waits = state.waits + 1
    return Transition(dataclasses.replace(state, waits=waits),
                      retry_after_s=backoff_s(waits, limits))


def refusal_reason(refusal: Refusal, error: str) -> str:
    """The cancel reason for a refused step: what it was, with the downstream's words."""
    if refusal is Refusal.OUT_OF_STOCK:
        return f"{REASON_OUT_OF_STOCK}: {error}" if error else REASON_OUT_OF_STOCK
    if refusal is Refusal.INVALID_CARD:
        return f"{REASON_INVALID_CARD}: {error}" if error else REASON_INVALID_CARD
    if refusal is Refusal.DECLINED:
        return REASON_DECLINED
    return error


def advance(state: SagaState, outcome: Outcome, error: str = "",
            limits: Limits = Limits(), refusal: Refusal = Refusal.NONE) -> Transition:
    """The saga after one attempt of `state.step` ended with `outcome` (`refusal`: the
    kind of a REFUSED outcome, by default what the step's refusal usually means)."""
    step = state.step
    if outcome is Outcome.REFUSED and refusal is Refusal.NONE:
        refusal = _DEFAULT_REFUSAL.get(step, Refusal.NONE)
    if step in COMPENSATIONS:
        return _advance_compensation(state, outcome, error, limits, refusal)
    if outcome is Outcome.DEFERRED:
        # Forward steps give up as before (then compensate); nothing was attempted.
        return _failed_attempt(state, _limit(step, limits), limits, _give_up(state),
                               Outcome.DEFERRED)
    if step is Step.RESERVE:
        if outcome is Outcome.SUCCEEDED:
            return Transition(_to(state, Step.CHARGE))
        if outcome is Outcome.REFUSED:
            reason = refusal_reason(refusal, error)
            if state.uncertain:
                # An earlier attempt may have reserved: release it (idempotent).
                return Transition(_compensate(state, Step.RELEASE, reason, refusal))
            done = _end(dataclasses.replace(state, reason=reason, refusal=refusal),
                        SagaStatus.DONE)
            return Transition(done, final_status=OrderStatus.CANCELLED)
        return _failed_attempt(state, limits.reserve, limits, _give_up(state), outcome)
    if step is Step.CHARGE:
        if outcome is Outcome.SUCCEEDED:
            return Transition(_to(state, Step.CONFIRM, charged=True, card_token=""))
        if outcome is Outcome.REFUSED:
            # An earlier attempt may have charged: refund first (idempotent), then release.
            first = Step.REFUND if state.uncertain else Step.RELEASE
            return Transition(_compensate(state, first, refusal_reason(refusal, error),
                                          refusal))
        return _failed_attempt(state, limits.charge, limits, _give_up(state), outcome)
    if step is Step.CONFIRM:
        if outcome is Outcome.SUCCEEDED:
            return Transition(_end(dataclasses.replace(state, committed=True),
                                   SagaStatus.DONE), final_status=OrderStatus.CONFIRMED)
        if outcome is Outcome.REFUSED:
            # Charged, and inventory will not commit: nothing a retry could fix.
            reason = f"{REASON_COMMIT_REFUSED}: {error}" if error else REASON_COMMIT_REFUSED
            return _attention(state, reason, refusal)
        # Past the pivot: retried until it succeeds, never compensated.
        return _failed_attempt(state, None, limits, None, outcome)
    raise ValueError(f"saga of order {state.order_id} has ended; nothing to advance")


def _limit(step: Step, limits: Limits) -> int | None:
    return {Step.RESERVE: limits.reserve, Step.CHARGE: limits.charge}.get(step)


def _give_up(state: SagaState) -> Transition | None:
    """A forward step out of attempts without an answer: compensate what may have happened."""
    if state.step is Step.RESERVE:
        return Transition(_compensate(state, Step.RELEASE, REASON_INVENTORY_DOWN))
    if state.step is Step.CHARGE:
        # The charge may have happened: a refund (or its tombstone) settles that.
        return Transition(_compensate(state, Step.REFUND, REASON_PAYMENT_DOWN))
    return None


def _advance_compensation(state: SagaState, outcome: Outcome, error: str, limits: Limits,
                          refusal: Refusal) -> Transition:
    step = state.step
    if outcome in (Outcome.UNWELL, Outcome.DEFERRED):
        return _wait(state, limits)
    if outcome is Outcome.SUCCEEDED:
        if step is Step.CANCEL_SHIPMENT:
            return Transition(_to(state, Step.REFUND))
        if step is Step.REFUND:
            return Transition(_to(state, Step.RESTOCK if state.committed else Step.RELEASE))
        return Transition(_end(state, SagaStatus.DONE), final_status=OrderStatus.CANCELLED)
    if outcome is Outcome.REFUSED:
        if step is Step.RELEASE:
            # Already committed (sold): the units go back by a restock instead.
            return Transition(_to(state, Step.RESTOCK))
        if step is Step.CANCEL_SHIPMENT:
            # Dispatched before the cancel: the order ships, nothing is refunded.
            done = _end(dataclasses.replace(state, refusal=Refusal.ALREADY_SHIPPED),
                        SagaStatus.DONE)
            return Transition(done, final_status=OrderStatus.SHIPPED)
        if step is Step.RESTOCK:
            return _attention(state, refusal=refusal)
    # UNKNOWN (or a refusal a compensation cannot have): retried up to the limit.
    return _failed_attempt(state, limits.compensation, limits, _attention(state), outcome)


def is_invalid_card(state: SagaState) -> bool:
    return state.refusal is Refusal.INVALID_CARD


def check_cancellable(order: Order) -> None:
    """Raises when a customer may not cancel the order; CANCELLED is an idempotent no-op."""
    if order.status is OrderStatus.SHIPPED:
        raise FailedPrecondition("order already shipped")
    if order.status is OrderStatus.REQUIRES_ATTENTION:
        raise FailedPrecondition("order requires manual attention; an operator must settle it")
