"""Payment rules without I/O: validation, card outcomes, idempotent Charge and Refund."""

from __future__ import annotations

import pytest

from services.common.errors import FailedPrecondition, InvalidArgument, NotFound
from services.payment import domain as d


def req(amount: int = 1000, currency: str = "USD", token: str = "tok_visa") -> d.ChargeRequest:
    return d.validate_charge("o1", "u1", amount, currency, token)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("", "u1", 100, "USD", "tok_visa"), "order_id is required"),
        (("o" * 200, "u1", 100, "USD", "tok_visa"), "order_id is longer"),
        (("o1", "", 100, "USD", "tok_visa"), "user_id is required"),
        (("o1", "u1", 0, "USD", "tok_visa"), "amount_cents must be positive"),
        (("o1", "u1", -5, "USD", "tok_visa"), "amount_cents must be positive"),
        (("o1", "u1", 10**13, "USD", "tok_visa"), "at most"),
        (("o1", "u1", 100, "US", "tok_visa"), "3-letter"),
        (("o1", "u1", 100, "US1", "tok_visa"), "3-letter"),
        (("o1", "u1", 100, "USD", ""), "card_token is required"),
        (("o1", "u1", 100, "USD", "tok_mastercard"), "unknown card token"),
    ],
)
def test_validate_charge_rejects(args: tuple[str, str, int, str, str], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        d.validate_charge(*args)


def test_validate_charge_normalizes_currency() -> None:
    assert req(currency="eur").currency == "EUR"


def test_first_charge_with_visa_is_charged() -> None:
    decision = d.decide_charge(req(), None, now=5.0)
    assert decision.is_new
    p = decision.payment
    assert (p.status, p.amount_cents, p.refunded_cents, p.currency) == (
        d.Status.CHARGED, 1000, 0, "USD")
    assert p.decline_reason == ""
    d.raise_if_declined(p)  # no error


def test_declined_card_is_recorded_and_refused() -> None:
    decision = d.decide_charge(req(token="tok_chargeDeclined"), None, now=5.0)
    assert decision.is_new
    assert decision.payment.status is d.Status.DECLINED
    with pytest.raises(FailedPrecondition, match="card declined"):
        d.raise_if_declined(decision.payment)


def test_repeat_charge_replays_first_outcome() -> None:
    first = d.decide_charge(req(), None, now=5.0).payment
    again = d.decide_charge(req(), first, now=9.0)
    assert not again.is_new
    assert again.payment is first


def test_repeat_after_decline_stays_declined_even_with_good_card() -> None:
    first = d.decide_charge(req(token="tok_chargeDeclined"), None, now=5.0).payment
    again = d.decide_charge(req(token="tok_visa"), first, now=9.0)
    assert not again.is_new
    with pytest.raises(FailedPrecondition, match="card declined"):
        d.raise_if_declined(again.payment)


@pytest.mark.parametrize(("amount", "currency"), [(999, "USD"), (1000, "EUR")])
def test_repeat_with_other_terms_is_refused(amount: int, currency: str) -> None:
    first = d.decide_charge(req(), None, now=5.0).payment
    with pytest.raises(FailedPrecondition, match="order o1 already charged with a different"):
        d.decide_charge(req(amount=amount, currency=currency), first, now=9.0)


def test_refund_of_charge_refunds_all_once() -> None:
    charged = d.decide_charge(req(), None, now=5.0).payment
    first = d.decide_refund("o1", charged, now=7.0)
    assert (first.changed, first.emit) == (True, True)
    assert first.payment.status is d.Status.REFUNDED
    assert first.payment.refunded_cents == 1000
    assert first.payment.updated_at == 7.0
    second = d.decide_refund("o1", first.payment, now=8.0)
    assert (second.changed, second.emit) == (False, False)
    assert second.payment == first.payment


def test_refund_of_declined_is_a_no_op() -> None:
    declined = d.decide_charge(req(token="tok_chargeDeclined"), None, now=5.0).payment
    decision = d.decide_refund("o1", declined, now=7.0)
    assert (decision.changed, decision.emit) == (False, False)
    assert decision.payment.status is d.Status.DECLINED


def test_refund_of_unknown_order_leaves_a_tombstone_that_refuses_charges() -> None:
    decision = d.decide_refund("o1", None, now=7.0)
    assert (decision.changed, decision.emit) == (True, False)
    tomb = decision.payment
    assert tomb.status is d.Status.VOID
    assert tomb.amount_cents == 0
    with pytest.raises(FailedPrecondition, match="order o1 was refunded/cancelled"):
        d.decide_charge(req(), tomb, now=9.0)
    again = d.decide_refund("o1", tomb, now=8.0)
    assert not again.changed


def test_charge_after_refund_is_refused() -> None:
    charged = d.decide_charge(req(), None, now=5.0).payment
    refunded = d.decide_refund("o1", charged, now=6.0).payment
    with pytest.raises(FailedPrecondition, match="refunded/cancelled"):
        d.decide_charge(req(), refunded, now=9.0)


def test_refund_of_another_users_payment_is_not_found() -> None:
    charged = d.decide_charge(req(), None, now=5.0).payment
    with pytest.raises(NotFound, match="payment for order o1 not found"):
        d.decide_refund("o1", charged, now=6.0, caller="u2")
    assert d.decide_refund("o1", charged, now=6.0, caller="u1").emit
