"""Shipping rules without I/O: tracking numbers and the shipment of a confirmed order."""

from __future__ import annotations

import pytest

from services.common.errors import FailedPrecondition, InvalidArgument
from services.shipping import domain as d


def test_tracking_number_shape() -> None:
    for _ in range(200):
        number = d.new_tracking_number()
        assert len(number) == 15
        assert number.startswith("SHP")
        assert d.is_tracking_number(number), number


def test_tracking_numbers_are_random() -> None:
    assert len({d.new_tracking_number() for _ in range(1000)}) == 1000


@pytest.mark.parametrize("bad", ["", "SHP123", "shpABCDEFGHIJKL", "SHPabcdefghijkl",
                                 "XYZABCDEFGHIJKL", "SHPABCDEFGHIJKLM"])
def test_is_tracking_number_rejects(bad: str) -> None:
    assert not d.is_tracking_number(bad)


def test_plan_shipment_is_pending_until_its_dispatch_time() -> None:
    s = d.plan_shipment("o1", "u1", now=3.0, delay_s=2.0)
    assert (s.order_id, s.user_id, s.status, s.carrier, s.created_at, s.dispatch_at) == (
        "o1", "u1", d.Status.PENDING, "shop-post", 3.0, 5.0)
    assert d.is_tracking_number(s.tracking_number)
    assert d.plan_shipment("o1", "u1", 3.0, 0.0, tracking_number="SHPAAAAAAAAAAAA"
                           ).tracking_number == "SHPAAAAAAAAAAAA"
    assert d.plan_shipment("o1", "u1", 3.0, 2.0, cancelled=True).status is d.Status.CANCELLED
    assert d.dispatch(s).status is d.Status.SHIPPED


@pytest.mark.parametrize(("order_id", "user_id", "message"),
                         [("", "u1", "without an order id"), ("o1", "", "no user id")])
def test_plan_shipment_needs_ids(order_id: str, user_id: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        d.plan_shipment(order_id, user_id, now=1.0, delay_s=0.0)


def test_cancel_rules() -> None:
    pending = d.plan_shipment("o1", "u1", 1.0, 2.0)
    assert d.decide_cancel("o1", pending, False) is d.CancelEffect.CANCEL
    cancelled = d.plan_shipment("o1", "u1", 1.0, 2.0, cancelled=True)
    assert d.decide_cancel("o1", cancelled, False) is d.CancelEffect.NONE  # idempotent
    assert d.decide_cancel("o1", None, False) is d.CancelEffect.REMEMBER
    assert d.decide_cancel("o1", None, True) is d.CancelEffect.NONE
    for shipped in (d.dispatch(pending),):
        with pytest.raises(FailedPrecondition, match="already shipped"):
            d.decide_cancel("o1", shipped, False)
    with pytest.raises(FailedPrecondition, match="not PENDING"):
        d.dispatch(cancelled)


def test_dispatch_delay_bounds() -> None:
    assert d.validate_dispatch_delay(0.0) == 0.0
    with pytest.raises(ValueError, match="SHIPPING_DISPATCH_DELAY_S"):
        d.validate_dispatch_delay(-1.0)


def test_validate_order_id() -> None:
    assert d.validate_order_id(" o1 ") == "o1"
    with pytest.raises(InvalidArgument, match="order_id is required"):
        d.validate_order_id("  ")
    with pytest.raises(InvalidArgument, match="longer than"):
        d.validate_order_id("x" * 129)
