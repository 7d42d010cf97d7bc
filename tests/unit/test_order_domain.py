"""The order rules and the saga state machine, without I/O."""

from __future__ import annotations

import pytest

from services.common.errors import FailedPrecondition, InvalidArgument, NotFound
from services.order import domain as d
from services.order.domain import Outcome, SagaState, SagaStatus, Step

LIMITS = d.Limits(reserve=3, charge=3, compensation=3, backoff_base_s=0.1, backoff_max_s=1.0)


def run(state: SagaState, *outcomes: tuple[Outcome, str]) -> tuple[SagaState, list[Step],
                                                                   d.OrderStatus | None]:
    """Feeds outcomes one by one; returns the final state, the steps tried, the end status."""
    tried: list[Step] = []
    final = None
    for outcome, error in outcomes:
        tried.append(state.step)
        tr = d.advance(state, outcome, error, LIMITS)
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


def test_unknown_token_cancels_with_invalid_card_reason() -> None:
    state, _, final = run(SagaState("o1"), OK, (Outcome.REFUSED, "invalid card token: tok_x"), OK)
    assert final is d.OrderStatus.CANCELLED
    assert d.is_invalid_card(state.reason)


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


def test_refused_release_of_committed_stock_is_skipped() -> None:
    state = SagaState("o1", step=Step.RELEASE, status=SagaStatus.COMPENSATING)
    tr = d.advance(state, Outcome.REFUSED, "reservation committed", LIMITS)
    assert tr.final_status is d.OrderStatus.CANCELLED and tr.label == "skipped"


def test_cancel_request_compensates_from_current_step() -> None:
    at_reserve = d.apply_cancel_request(SagaState("o1", cancel_requested=True))
    assert at_reserve.step is Step.RELEASE and at_reserve.reason == d.REASON_CUSTOMER
    at_charge = d.apply_cancel_request(SagaState("o1", step=Step.CHARGE, cancel_requested=True))
    assert at_charge.step is Step.REFUND
    untouched = SagaState("o1", step=Step.CHARGE)
    assert d.apply_cancel_request(untouched) is untouched
    confirmed = SagaState("o1", step=Step.DONE, status=SagaStatus.DONE, charged=True)
    cancelled = d.cancel_confirmed(confirmed, "changed my mind")
    assert (cancelled.step, cancelled.status, cancelled.reason) == (
        Step.REFUND, SagaStatus.COMPENSATING, "changed my mind")


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
    limits = d.Limits(charge=2, compensation=2, backoff_max_s=0.5)
    state = d.SagaState("o1", step=d.Step.REFUND, status=d.SagaStatus.COMPENSATING, attempt=1)
    tr = d.advance(state, d.Outcome.DEFERRED, "payment.Refund: circuit open", limits)
    assert tr.state == state and tr.final_status is None
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
