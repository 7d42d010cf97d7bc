"""Shipping rules without I/O: tracking numbers and the shipment of a confirmed order."""

from __future__ import annotations

import pytest

from services.common.errors import InvalidArgument
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


def test_ship_order() -> None:
    s = d.ship_order("o1", "u1", now=3.0)
    assert (s.order_id, s.user_id, s.status, s.carrier, s.created_at) == (
        "o1", "u1", d.Status.SHIPPED, "shop-post", 3.0)
    assert d.is_tracking_number(s.tracking_number)
    assert d.ship_order("o1", "u1", 3.0, "SHPAAAAAAAAAAAA").tracking_number == "SHPAAAAAAAAAAAA"


@pytest.mark.parametrize(("order_id", "user_id", "message"),
                         [("", "u1", "without an order id"), ("o1", "", "no user id")])
def test_ship_order_needs_ids(order_id: str, user_id: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        d.ship_order(order_id, user_id, now=1.0)


def test_validate_order_id() -> None:
    assert d.validate_order_id(" o1 ") == "o1"
    with pytest.raises(InvalidArgument, match="order_id is required"):
        d.validate_order_id("  ")
    with pytest.raises(InvalidArgument, match="longer than"):
        d.validate_order_id("x" * 129)
