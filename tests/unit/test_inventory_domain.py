"""Inventory rules without I/O: validation, all-or-nothing reservations, transitions."""

from __future__ import annotations

import pytest

from services.common.errors import FailedPrecondition, InvalidArgument, NotFound
from services.inventory import domain as d

R, J, L, C = d.Status.RESERVED, d.Status.REJECTED, d.Status.RELEASED, d.Status.COMMITTED


def res(status: d.Status, reason: str = "") -> d.Reservation:
    return d.Reservation("o1", status, (d.Line("a", 2),), reason)


@pytest.mark.parametrize(
    ("order_id", "items", "message"),
    [
        ("", [("a", 1)], "order_id is required"),
        ("o" * 129, [("a", 1)], "order_id is longer"),
        ("o1", [], "items must not be empty"),
        ("o1", [("", 1)], "product_id is required"),
        ("o1", [("a", 0)], "quantity for a must be between 1 and 10000, got 0"),
        ("o1", [("a", -3)], "between 1 and 10000"),
        ("o1", [("a", 10_001)], "between 1 and 10000"),
        ("o1", [(f"p{i}", 1) for i in range(101)], "at most 100 items"),
    ],
)
def test_validate_reserve_rejects(order_id: str, items: list[tuple[str, int]],
                                  message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        d.validate_reserve(order_id, items)


def test_validate_reserve_merges_duplicates_and_sorts() -> None:
    lines = d.validate_reserve("o1", [("b", 2), ("a", 1), ("b", 3)])
    assert lines == (d.Line("a", 1), d.Line("b", 5))


def test_validate_reserve_accepts_limits() -> None:
    lines = d.validate_reserve("o1", [(f"p{i:03}", 10_000) for i in range(100)])
    assert len(lines) == 100 and lines[0] == d.Line("p000", 10_000)


@pytest.mark.parametrize(("pid", "available"), [("", 1), ("a", -1), ("a", d.MAX_STOCK + 1)])
def test_validate_set_stock_rejects(pid: str, available: int) -> None:
    with pytest.raises(InvalidArgument):
        d.validate_set_stock(pid, available)


def test_reserve_fits_when_every_line_fits() -> None:
    lines = (d.Line("a", 3), d.Line("b", 10))
    r = d.decide_reserve("o1", lines, {"a": 3, "b": 11})
    assert r == d.Reservation("o1", R, lines, "")


def test_reserve_is_all_or_nothing_naming_the_short_line() -> None:
    lines = (d.Line("a", 1), d.Line("b", 5))
    r = d.decide_reserve("o1", lines, {"a": 100, "b": 4})
    assert r.status is J
    assert r.reason == "insufficient stock for b: requested 5, available 4"
    assert r.items == lines


def test_reserve_of_unknown_product_is_not_found() -> None:
    with pytest.raises(NotFound, match="product zz not found"):
        d.decide_reserve("o1", (d.Line("a", 1), d.Line("zz", 1)), {"a": 5})


def test_outcome_replays_first_result() -> None:
    assert d.outcome(res(R)).status is R
    assert d.outcome(res(C)).status is C
    with pytest.raises(FailedPrecondition, match="insufficient stock for a"):
        d.outcome(res(J, "insufficient stock for a: requested 2, available 0"))
    with pytest.raises(FailedPrecondition, match="reservation already released"):
        d.outcome(res(L))


def test_release_of_reserved_returns_stock() -> None:
    t = d.decide_release("o1", res(R))
    assert t.effect is d.Effect.RETURN
    assert t.reservation.status is L and t.reservation.items == (d.Line("a", 2),)


def test_release_of_unknown_order_leaves_a_tombstone() -> None:
    t = d.decide_release("o9", None)
    assert t.effect is d.Effect.TOMBSTONE
    assert t.reservation == d.Reservation("o9", L, ())
    # A late Reserve for that order is refused.
    with pytest.raises(FailedPrecondition, match="already released"):
        d.outcome(t.reservation)


@pytest.mark.parametrize("status", [L, J])
def test_release_repeat_or_of_rejected_is_noop(status: d.Status) -> None:
    t = d.decide_release("o1", res(status))
    assert t.effect is d.Effect.NONE and t.reservation.status is status


def test_release_of_committed_is_refused() -> None:
    with pytest.raises(FailedPrecondition, match="sold stock cannot be released"):
        d.decide_release("o1", res(C))


def test_commit_of_reserved_sells_then_repeat_is_noop() -> None:
    t = d.decide_commit("o1", res(R))
    assert t.effect is d.Effect.SELL and t.reservation.status is C
    again = d.decide_commit("o1", t.reservation)
    assert again.effect is d.Effect.NONE and again.reservation.status is C


@pytest.mark.parametrize(
    ("existing", "message"),
    [
        (None, "no reservation for order o1"),
        (res(J, "insufficient stock"), "was rejected: insufficient stock"),
        (res(L), "was released"),
    ],
)
def test_commit_refused(existing: d.Reservation | None, message: str) -> None:
    with pytest.raises(FailedPrecondition, match=message):
        d.decide_commit("o1", existing)


def test_restock_of_committed_returns_sold_units_then_repeat_is_noop() -> None:
    t = d.decide_restock("o1", res(C))
    assert t.effect is d.Effect.RESTOCK and t.reservation.status is d.Status.RESTOCKED
    assert t.reservation.items == res(C).items
    again = d.decide_restock("o1", t.reservation)
    assert again.effect is d.Effect.NONE and again.reservation == t.reservation


def test_restock_before_the_commit_returns_reserved_units_and_the_commit_then_does_nothing(
        ) -> None:
    # A confirmed order cancelled before inventory consumed its order.confirmed.
    t = d.decide_restock("o1", res(R))
    assert t.effect is d.Effect.RETURN and t.reservation.status is d.Status.RESTOCKED
    assert t.reservation.items == res(R).items
    late = d.decide_confirmed_commit("o1", t.reservation)
    assert late.effect is d.Effect.NONE and late.reservation == t.reservation


def test_the_commit_after_a_confirmation_sells_once() -> None:
    t = d.decide_confirmed_commit("o1", res(R))
    assert t.effect is d.Effect.SELL and t.reservation.status is C
    again = d.decide_confirmed_commit("o1", t.reservation)
    assert again.effect is d.Effect.NONE


@pytest.mark.parametrize("existing", [None, res(d.Status.RELEASED), res(d.Status.REJECTED)])
def test_the_commit_after_a_confirmation_refuses_what_no_confirmed_order_leaves(
        existing: d.Reservation | None) -> None:
    with pytest.raises(FailedPrecondition):
        d.decide_confirmed_commit("o1", existing)


@pytest.mark.parametrize("existing", [None, res(d.Status.RELEASED), res(d.Status.REJECTED)])
def test_restock_of_stock_never_held_is_refused(existing: d.Reservation | None) -> None:
    with pytest.raises(FailedPrecondition, match="no committed stock"):
        d.decide_restock("o1", existing)


def test_restocked_reservation_refuses_release_commit_and_reserve() -> None:
    restocked = res(d.Status.RESTOCKED)
    with pytest.raises(FailedPrecondition):
        d.decide_release("o1", restocked)
    with pytest.raises(FailedPrecondition):
        d.decide_commit("o1", restocked)
    with pytest.raises(FailedPrecondition):
        d.outcome(restocked)
