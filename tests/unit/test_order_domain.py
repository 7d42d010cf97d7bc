"""The order rules and the saga state machine, without I/O."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.common.errors import FailedPrecondition, InvalidArgument, NotFound
from services.order import domain as d
from services.order.domain import Outcome, Refusal, SagaState, SagaStatus, Step

LIMITS = d.Limits(reserve=3, charge=3, compensation=3, backoff_base_s=0.1, backoff_max_s=1.0)


def run(state: SagaState, *outcomes: tuple[Outcome, str] | tuple[Outcome, str, Refusal]
        ) -> tuple[SagaState, list[Step], d.OrderStatus | None]:
    """Feeds outcomes one by one; returns the final state, the steps tried, the end status."""
    tried: list[Step] = []
    final = None
    for outcome, error, *kind in outcomes:
        tried.append(state.step)
        tr = d.advance(state, outcome, error, LIMITS, *kind)
        state, final = tr.state, tr.final_status
    return state, tried, final


OK = (Outcome.SUCCEEDED, "")


def test_happy_path_reserve_charge_confirm() -> None:
    state, tried, final = run(SagaState("o1", card_token="tok_visa"), OK, OK, OK)
    assert tried == [Step.RESERVE, Step.CHARGE, Step.CONFIRM]
    assert final is d.OrderStatus.CONFIRMED
    assert state.status is SagaStatus.DONE and state.charged
    assert state.card_token == ""  # not kept once the charge is settled


def test_out_of_stock_cancels_without_compensation() -> None:
    state, tried, final = run(SagaState("o1"), (Outcome.REFUSED, "yoga-mat: 2 available"))
    assert tried == [Step.RESERVE]
    assert final is d.OrderStatus.CANCELLED
    assert state.reason == "out of stock: yoga-mat: 2 available"


def test_declined_card_releases_stock_then_cancels() -> None:
    state, tried, final = run(SagaState("o1"), OK, (Outcome.REFUSED, "card declined"), OK)
    assert tried == [Step.RESERVE, Step.CHARGE, Step.RELEASE]
    assert final is d.OrderStatus.CANCELLED
    assert state.reason == "payment declined"


def test_unknown_token_cancels_with_invalid_card_refusal() -> None:
    """The kind of refusal travels typed on the saga (no message-prefix sniffing)."""
    state, _, final = run(SagaState("o1"), OK,
                          (Outcome.REFUSED, "unknown card token", Refusal.INVALID_CARD), OK)
    assert final is d.OrderStatus.CANCELLED
    assert d.is_invalid_card(state) and state.refusal is Refusal.INVALID_CARD
    assert state.reason == "invalid card token: unknown card token"
    declined, _, _ = run(SagaState("o1"), OK, (Outcome.REFUSED, "invalid card token: x"), OK)
    assert not d.is_invalid_card(declined)  # a message alone says nothing
    assert declined.refusal is Refusal.DECLINED


def test_unknown_charge_retries_with_growing_backoff_then_refunds_and_releases() -> None:
    state = d.advance(SagaState("o1"), Outcome.SUCCEEDED, "", LIMITS).state
    pauses = []
    for _ in range(LIMITS.charge - 1):
        tr = d.advance(state, Outcome.UNKNOWN, "deadline", LIMITS)
        assert tr.state.step is Step.CHARGE and tr.retry_after_s is not None
        pauses.append(d.backoff_s(tr.state.attempt, LIMITS, jitter=False))
        state = tr.state
    assert pauses == sorted(pauses) and pauses[0] < pauses[-1]
    tr = d.advance(state, Outcome.UNKNOWN, "deadline", LIMITS)
    # Compensation order is the reverse of the steps: refund first, then release.
    assert tr.state.step is Step.REFUND and tr.state.status is SagaStatus.COMPENSATING
    state, tried, final = run(tr.state, OK, OK)
    assert tried == [Step.REFUND, Step.RELEASE]
    assert final is d.OrderStatus.CANCELLED and state.reason == d.REASON_PAYMENT_DOWN


def test_confirm_is_never_compensated() -> None:
    state = SagaState("o1", step=Step.CONFIRM, charged=True)
    for _ in range(50):
        tr = d.advance(state, Outcome.UNKNOWN, "unavailable", LIMITS)
        assert tr.state.step is Step.CONFIRM and tr.final_status is None
        assert tr.retry_after_s is not None and tr.retry_after_s <= LIMITS.backoff_max_s
        state = tr.state


def test_compensation_gives_up_after_limit_requires_attention() -> None:
    state = SagaState("o1", step=Step.RELEASE, status=SagaStatus.COMPENSATING)
    outcomes = [(Outcome.UNKNOWN, "down")] * LIMITS.compensation
    state, tried, final = run(state, *outcomes)
    assert tried == [Step.RELEASE] * LIMITS.compensation
    assert final is d.OrderStatus.REQUIRES_ATTENTION
    assert state.status is SagaStatus.ATTENTION


def test_refused_release_of_committed_stock_restocks_it() -> None:
    """A cancel that raced the commit: the units are sold, so they are restocked (not left
    in sold for good)."""
    state = SagaState("o1", step=Step.RELEASE, status=SagaStatus.COMPENSATING)
    state, tried, final = run(state, (Outcome.REFUSED, "reservation committed"), OK)
    assert tried == [Step.RELEASE, Step.RESTOCK]
    assert final is d.OrderStatus.CANCELLED


def test_cancel_request_compensates_from_current_step() -> None:
    at_reserve = d.apply_cancel_request(SagaState("o1", cancel_requested=True))
    assert at_reserve.step is Step.RELEASE and at_reserve.reason == d.REASON_CUSTOMER
    at_charge = d.apply_cancel_request(SagaState("o1", step=Step.CHARGE, cancel_requested=True))
    assert at_charge.step is Step.REFUND
    untouched = SagaState("o1", step=Step.CHARGE)
    assert d.apply_cancel_request(untouched) is untouched
    confirmed = SagaState("o1", step=Step.DONE, status=SagaStatus.DONE, charged=True)
    cancelled = d.cancel_confirmed(confirmed, "changed my mind")
    assert (cancelled.step, cancelled.status, cancelled.reason, cancelled.committed) == (
        Step.CANCEL_SHIPMENT, SagaStatus.COMPENSATING, "changed my mind", True)


def test_advance_of_ended_saga_is_an_error() -> None:
    with pytest.raises(ValueError):
        d.advance(SagaState("o1", step=Step.DONE, status=SagaStatus.DONE), Outcome.SUCCEEDED)


@pytest.mark.parametrize(
    ("lines", "needle"),
    [
        ([], "at least one item"),
        ([("", 1)], "items[0].product_id"),
        ([("a", 0)], "quantity must be 1..99"),
        ([("a", 100)], "quantity must be 1..99"),
        ([("a", 1), ("a", 2)], "appears twice"),
        ([(f"p{i}", 1) for i in range(51)], "at most 50"),
    ],
)
def test_bad_lines_are_invalid(lines: list[tuple[str, int]], needle: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        d.validate_lines(lines)
    assert needle in str(err.value)


def test_card_token_shape() -> None:
    assert d.validate_card_token(" tok_visa ") == "tok_visa"
    for bad in ("", "   ", "visa", "4242424242424242"):
        with pytest.raises(InvalidArgument):
            d.validate_card_token(bad)


def test_pricing_totals_and_errors() -> None:
    lines = d.validate_lines([("a", 2), ("b", 1)])
    cat = {"a": (250, "USD"), "b": (1000, "USD")}
    priced, total, cur = d.price_lines(lines, cat)
    assert total == 1500 and cur == "USD"
    assert [ln.unit_price_cents for ln in priced] == [250, 1000]
    with pytest.raises(NotFound, match="product not found: b"):
        d.price_lines(lines, {"a": (250, "USD")})
    with pytest.raises(InvalidArgument, match="one currency"):
        d.price_lines(lines, {"a": (250, "USD"), "b": (1, "EUR")})


def test_page_token_round_trip_and_rejects_junk() -> None:
    tok = d.encode_page_token(1712345678.123456, "abc")
    assert d.decode_page_token(tok) == (1712345678.123456, "abc")
    assert d.decode_page_token("") is None
    for junk in ("!!!", "bm90LWEtdG9rZW4", "x"):
        with pytest.raises(InvalidArgument):
            d.decode_page_token(junk)
    assert d.page_size(0) == 20 and d.page_size(500) == 100 and d.page_size(7) == 7
    with pytest.raises(InvalidArgument):
        d.page_size(-1)


def test_cancellable() -> None:
    base = d.Order("o", "u", (), 0, "USD")
    d.check_cancellable(base)
    d.check_cancellable(d.Order("o", "u", (), 0, "USD", status=d.OrderStatus.CONFIRMED))
    with pytest.raises(FailedPrecondition, match="already shipped"):
        d.check_cancellable(d.Order("o", "u", (), 0, "USD", status=d.OrderStatus.SHIPPED))


def test_deferred_compensation_waits_without_using_an_attempt() -> None:
    """An open breaker (step not attempted) never pushes a compensation to its limit."""
    limits = d.Limits(charge=2, compensation=2, backoff_base_s=0.5, backoff_max_s=0.5)
    state = d.SagaState("o1", step=d.Step.REFUND, status=d.SagaStatus.COMPENSATING, attempt=1)
    tr = d.advance(state, d.Outcome.DEFERRED, "payment.Refund: circuit open", limits)
    assert tr.state.attempt == state.attempt and tr.final_status is None
    assert tr.state.waits == 1
    assert tr.retry_after_s is not None and 0.25 <= tr.retry_after_s <= 0.5
    # A forward step still counts it (it gives up, then compensates as before).
    charge = d.SagaState("o1", step=d.Step.CHARGE, attempt=1)
    assert d.advance(charge, d.Outcome.DEFERRED, "", limits).state.step is d.Step.REFUND


def test_total_above_what_payment_takes_is_refused_before_any_write() -> None:
    """Products may cost up to 10^10 cents and an order holds 50 x 99 of them, but one
    payment takes at most 10^12: such an order used to be written, its stock reserved, then
    cancelled as an "invalid card token" (Charge's INVALID_ARGUMENT on the amount)."""
    lines = d.validate_lines([("gold", 99), ("silver", 99)])
    cat = {"gold": (10**10, "USD"), "silver": (10**10, "USD")}
    with pytest.raises(InvalidArgument, match="at most"):
        d.price_lines(lines, cat)
    assert d.price_lines(d.validate_lines([("gold", 99)]), cat)[1] == 99 * 10**10


# --- cancelling a confirmed order ----------------------------------------------------------


def _confirmed() -> SagaState:
    state, _, final = run(SagaState("o1", card_token="tok_visa"), OK, OK, OK)
    assert final is d.OrderStatus.CONFIRMED and state.committed
    return state


def test_cancel_of_a_confirmed_order_cancels_shipment_refunds_restocks() -> None:
    state, tried, final = run(d.cancel_confirmed(_confirmed(), ""), OK, OK, OK)
    assert tried == [Step.CANCEL_SHIPMENT, Step.REFUND, Step.RESTOCK]
    assert final is d.OrderStatus.CANCELLED and state.reason == d.REASON_CUSTOMER


def test_cancel_after_dispatch_ends_shipped_without_refund() -> None:
    state, tried, final = run(d.cancel_confirmed(_confirmed(), "too late"),
                              (Outcome.UNWELL, "shipping: UNAVAILABLE"),
                              (Outcome.REFUSED, "already shipped"))
    assert tried == [Step.CANCEL_SHIPMENT, Step.CANCEL_SHIPMENT]
    assert final is d.OrderStatus.SHIPPED
    assert state.refusal is Refusal.ALREADY_SHIPPED and state.status is SagaStatus.DONE


def test_refused_restock_needs_attention_at_that_step() -> None:
    state, _, final = run(d.cancel_confirmed(_confirmed(), ""), OK, OK,
                          (Outcome.REFUSED, "nothing committed"))
    assert final is d.OrderStatus.REQUIRES_ATTENTION
    assert (state.step, state.status, state.refusal) == (
        Step.RESTOCK, SagaStatus.ATTENTION, Refusal.NOT_COMMITTED)


# --- uncertain steps always compensate ------------------------------------------------------


def test_charge_unknown_then_refused_refunds_before_releasing() -> None:
    """A Charge that timed out may have charged; a later "declined" (or a refusal after a
    restart) must not leave that money kept: refund (idempotent), then release."""
    state, tried, final = run(SagaState("o1"), OK, (Outcome.UNWELL, "DEADLINE_EXCEEDED"),
                              (Outcome.UNKNOWN, "UNIMPLEMENTED"),
                              (Outcome.REFUSED, "card declined"), OK, OK)
    assert tried == [Step.RESERVE, Step.CHARGE, Step.CHARGE, Step.CHARGE, Step.REFUND,
                     Step.RELEASE]
    assert final is d.OrderStatus.CANCELLED and state.reason == d.REASON_DECLINED


def test_reserve_unknown_then_refused_releases() -> None:
    state, tried, final = run(SagaState("o1"), (Outcome.UNWELL, "DEADLINE_EXCEEDED"),
                              (Outcome.REFUSED, "insufficient stock"), OK)
    assert tried == [Step.RESERVE, Step.RESERVE, Step.RELEASE]
    assert final is d.OrderStatus.CANCELLED
    assert state.reason == "out of stock: insufficient stock"


def test_refusal_after_only_deferred_attempts_compensates_nothing_extra() -> None:
    """An open breaker means the call was never sent: nothing to undo for it."""
    _, tried, _ = run(SagaState("o1"), OK, (Outcome.DEFERRED, "circuit open"),
                      (Outcome.REFUSED, "card declined"), OK)
    assert tried == [Step.RESERVE, Step.CHARGE, Step.CHARGE, Step.RELEASE]


# --- nothing waits for a human that a retry could fix ---------------------------------------


@pytest.mark.parametrize("step", d.COMPENSATIONS)
def test_unwell_compensation_waits_with_backoff_and_never_gives_up(step: Step) -> None:
    state = SagaState("o1", step=step, status=SagaStatus.COMPENSATING, committed=True)
    pauses = []
    for _ in range(10 * LIMITS.compensation):
        tr = d.advance(state, Outcome.UNWELL, "UNAVAILABLE", LIMITS)
        assert tr.final_status is None and tr.state.step is step and tr.state.attempt == 0
        assert tr.retry_after_s is not None
        pauses.append(d.backoff_s(tr.state.waits, LIMITS, jitter=False))
        state = tr.state
    assert pauses == sorted(pauses) and pauses[0] < pauses[-1] == LIMITS.backoff_max_s


def test_refused_commit_needs_attention_instead_of_looping() -> None:
    at_confirm = run(SagaState("o1"), OK, OK)[0]
    tr = d.advance(at_confirm, Outcome.REFUSED, "no reservation for order o1", LIMITS)
    assert tr.final_status is d.OrderStatus.REQUIRES_ATTENTION and tr.retry_after_s is None
    assert (tr.state.step, tr.state.status, tr.state.refusal) == (
        Step.CONFIRM, SagaStatus.ATTENTION, Refusal.COMMIT_REFUSED)
    assert tr.state.reason.startswith(d.REASON_COMMIT_REFUSED)


def test_retry_resumes_the_step_that_gave_up_with_fresh_attempts() -> None:
    stuck, _, final = run(SagaState("o1", step=Step.RELEASE, status=SagaStatus.COMPENSATING),
                          *[(Outcome.UNKNOWN, "UNIMPLEMENTED")] * LIMITS.compensation)
    assert final is d.OrderStatus.REQUIRES_ATTENTION and stuck.step is Step.RELEASE
    again = d.retry_attention(stuck)
    assert (again.step, again.status, again.attempt) == (Step.RELEASE,
                                                         SagaStatus.COMPENSATING, 0)
    assert d.status_while_running(again) is d.OrderStatus.PENDING
    _, _, final = run(again, OK)
    assert final is d.OrderStatus.CANCELLED
    confirm = d.retry_attention(
        d.advance(run(SagaState("o1"), OK, OK)[0], Outcome.REFUSED, "x", LIMITS).state)
    assert (confirm.step, confirm.status) == (Step.CONFIRM, SagaStatus.RUNNING)
    cancelling = d.retry_attention(dataclasses.replace(
        d.cancel_confirmed(_confirmed(), ""), status=SagaStatus.ATTENTION))
    assert d.status_while_running(cancelling) is d.OrderStatus.CONFIRMED
    for state in (SagaState("o1"), _confirmed(), again):
        with pytest.raises(FailedPrecondition, match="not requires_attention"):
            d.retry_attention(state)


# --- property-like: any mix of answers keeps goods and money right ---------------------------

_ANSWERS = [Outcome.SUCCEEDED, Outcome.REFUSED, Outcome.UNKNOWN, Outcome.UNWELL,
            Outcome.DEFERRED]
# The effect a step has on the world when it takes effect.
_EFFECT = {Step.RESERVE: "reserved", Step.CHARGE: "charged", Step.CONFIRM: "committed"}


def _check_run(answers: list[Outcome], cancel_at: int | None, cancel_after_confirm: bool,
               limits: d.Limits) -> None:
    """Drive the saga with `answers` (one per attempt; success once they run out), a
    customer's cancel before attempt `cancel_at` and/or after confirmation; then check
    what the saga did against what may have happened downstream."""
    state = SagaState("o1", card_token="tok_visa")
    maybe: set[str] = set()  # effects that may have happened (an attempt not refused)
    done: list[tuple[Step, Outcome]] = []
    final = None
    answers = list(answers)
    for i in range(400):
        if final is not None:
            if final is d.OrderStatus.CONFIRMED and cancel_after_confirm:
                cancel_after_confirm = False
                state, final = d.cancel_confirmed(state, ""), None
                continue
            break
        if cancel_at == i:
            state = d.apply_cancel_request(dataclasses.replace(state, cancel_requested=True))
        outcome = answers.pop(0) if answers else Outcome.SUCCEEDED
        step = state.step
        if outcome in (Outcome.SUCCEEDED, Outcome.UNKNOWN, Outcome.UNWELL) and step in _EFFECT:
            maybe.add(_EFFECT[step])
        before = state
        tr = d.advance(state, outcome, "", limits)
        if step in d.COMPENSATIONS and outcome in (Outcome.UNWELL, Outcome.DEFERRED):
            assert tr.state.attempt == before.attempt, "a wait used up an attempt"
        done.append((step, outcome))
        state, final = tr.state, tr.final_status
    assert final is not None, f"no end after {done}"
    ok = {s for s, o in done if o is Outcome.SUCCEEDED}
    if final is d.OrderStatus.CANCELLED:
        if "charged" in maybe:
            assert Step.REFUND in ok, f"charge may have happened, no refund: {done}"
        if "reserved" in maybe or "committed" in maybe:
            assert ok & {Step.RELEASE, Step.RESTOCK}, f"stock kept: {done}"
        if Step.CANCEL_SHIPMENT in {s for s, _ in done}:
            assert Step.CANCEL_SHIPMENT in ok, f"cancelled, shipment not: {done}"
    elif final is d.OrderStatus.CONFIRMED:
        assert {Step.RESERVE, Step.CHARGE, Step.CONFIRM} <= ok
        assert not ok & set(d.COMPENSATIONS)
    elif final is d.OrderStatus.SHIPPED:
        assert done[-1] == (Step.CANCEL_SHIPMENT, Outcome.REFUSED)
        assert Step.REFUND not in ok, "refunded a shipped order"
    else:
        assert final is d.OrderStatus.REQUIRES_ATTENTION
        last_step, last = done[-1]
        # Only a refusal nothing can fix, or a compensation out of attempts on answers
        # that were neither an unwell downstream nor an open breaker.
        unknowns = [o for s, o in done if s is last_step and o is Outcome.UNKNOWN]
        assert (last is Outcome.REFUSED and last_step in (Step.CONFIRM, Step.RESTOCK)) or (
            last_step in d.COMPENSATIONS and len(unknowns) >= limits.compensation), done


@given(answers=st.lists(st.sampled_from(_ANSWERS), max_size=40),
       cancel_at=st.one_of(st.none(), st.integers(0, 12)),
       cancel_after_confirm=st.booleans())
@settings(max_examples=600, deadline=None, derandomize=True)
def test_any_mix_of_answers_keeps_goods_and_money_right(
        answers: list[Outcome], cancel_at: int | None, cancel_after_confirm: bool) -> None:
    _check_run(answers, cancel_at, cancel_after_confirm,
               d.Limits(reserve=3, charge=3, compensation=3))


def test_every_short_answer_sequence_keeps_goods_and_money_right() -> None:
    """Exhaustive over every sequence of up to four answers (with and without a cancel
    after confirmation): the property above, without sampling."""
    limits = d.Limits(reserve=2, charge=2, compensation=2)
    for n in range(5):
        for answers in itertools.product(_ANSWERS, repeat=n):
            for after in (False, True):
                _check_run(list(answers), None, after, limits)
