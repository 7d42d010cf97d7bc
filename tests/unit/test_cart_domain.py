"""Cart rules without I/O: quantity limits, merging lines, one currency, totals."""

from __future__ import annotations

import pytest

from services.cart import domain as d
from services.common.errors import FailedPrecondition, InvalidArgument

MUG = d.ProductInfo("mug", "Mug", 1250, "USD")
PEN = d.ProductInfo("pen", "Pen", 199, "USD")


def cart(*lines: d.CartLine) -> d.Cart:
    return d.Cart("u1", lines)


def test_empty_cart_totals_zero_in_usd() -> None:
    c = d.Cart("u1")
    assert (c.items, c.total_cents, c.currency) == ((), 0, "USD")


def test_total_is_sum_of_quantity_times_price() -> None:
    c = cart(d.CartLine("mug", 3, 1250, "Mug", "USD"), d.CartLine("pen", 2, 199, "Pen", "USD"))
    assert c.total_cents == 3 * 1250 + 2 * 199


@pytest.mark.parametrize("quantity", [0, -1, 100])
def test_quantity_out_of_bounds(quantity: int) -> None:
    with pytest.raises(InvalidArgument, match="quantity must be between 1 and 99"):
        d.add_line(d.Cart("u1"), MUG, quantity)


def test_add_new_line_takes_product_price_and_name() -> None:
    assert d.add_line(d.Cart("u1"), MUG, 99) == d.CartLine("mug", 99, 1250, "Mug", "USD")


def test_adding_existing_product_adds_quantities_at_current_price() -> None:
    c = cart(d.CartLine("mug", 40, 1000, "Old mug", "USD"))
    line = d.add_line(c, MUG, 59)
    assert line == d.CartLine("mug", 99, 1250, "Mug", "USD")


def test_adding_past_99_in_total_is_refused() -> None:
    c = cart(d.CartLine("mug", 60, 1250, "Mug", "USD"))
    with pytest.raises(InvalidArgument, match="would be 100; at most 99"):
        d.add_line(c, MUG, 40)


def test_one_currency_per_cart() -> None:
    c = cart(d.CartLine("mug", 1, 1250, "Mug", "USD"))
    with pytest.raises(FailedPrecondition, match="cart is in USD"):
        d.add_line(c, d.ProductInfo("tea", "Tea", 500, "EUR"), 1)


def test_cart_holds_at_most_max_lines() -> None:
    full = cart(*(d.CartLine(f"p{i}", 1, 1, "P", "USD") for i in range(d.MAX_LINES)))
    with pytest.raises(FailedPrecondition, match="at most 100 different products"):
        d.add_line(full, MUG, 1)
    # Growing a line already in a full cart is fine.
    assert d.add_line(full, d.ProductInfo("p0", "P", 1, "USD"), 1).quantity == 2


def test_with_line_replaces_in_place_or_appends() -> None:
    c = cart(d.CartLine("mug", 1, 1250, "Mug", "USD"), d.CartLine("pen", 1, 199, "Pen", "USD"))
    grown = d.with_line(c, d.CartLine("mug", 5, 1250, "Mug", "USD"))
    assert [(li.product_id, li.quantity) for li in grown.items] == [("mug", 5), ("pen", 1)]
    more = d.with_line(c, d.CartLine("cup", 2, 300, "Cup", "USD"))
    assert [li.product_id for li in more.items] == ["mug", "pen", "cup"]


@pytest.mark.parametrize(("pid", "message"), [("", "required"), ("x" * 129, "longer")])
def test_validate_product_id(pid: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        d.validate_product_id(pid)
