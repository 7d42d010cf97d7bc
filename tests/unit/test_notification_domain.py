"""Notification rules without I/O: message texts, money formatting, paging, ownership."""

from __future__ import annotations

import pytest

from services.common.errors import InvalidArgument, NotFound
from services.notification import domain as d


@pytest.mark.parametrize(
    ("cents", "currency", "text"),
    [
        (1234, "USD", "12.34 USD"),
        (5, "usd", "0.05 USD"),
        (123456789, "EUR", "1,234,567.89 EUR"),
        (-250, "USD", "-2.50 USD"),
        (500, "JPY", "500 JPY"),
        (1234, "KWD", "1.234 KWD"),
        (0, "USD", "0.00 USD"),
    ],
)
def test_format_money(cents: int, currency: str, text: str) -> None:
    assert d.format_money(cents, currency) == text


def test_welcome() -> None:
    draft = d.welcome("u1", "Ada")
    assert (draft.user_id, draft.kind) == ("u1", d.Kind.WELCOME)
    assert draft.subject == "Welcome to shop, Ada"
    assert "Welcome to shop, Ada" in draft.body


def test_receipt_formats_amount() -> None:
    draft = d.receipt("u1", "o1", 4999, "USD")
    assert draft.kind is d.Kind.RECEIPT
    assert "49.99 USD" in draft.body and "o1" in draft.body


def test_payment_failed_and_refund() -> None:
    failed = d.payment_failed("u1", "o1", 100, "USD", "card declined")
    assert failed.kind is d.Kind.PAYMENT_FAILED and "card declined" in failed.body
    refund = d.refund("u1", "o1", 100, "USD")
    assert refund.kind is d.Kind.REFUND and "1.00 USD" in refund.body


def test_order_messages() -> None:
    assert d.order_confirmed("u1", "o1", 100, "USD").kind is d.Kind.ORDER_CONFIRMED
    cancelled = d.order_cancelled("u1", "o1", "out of stock")
    assert cancelled.kind is d.Kind.ORDER_CANCELLED and "out of stock" in cancelled.body
    shipped = d.shipped("u1", "o1", "SHPABCDEF123456", "shop-post")
    assert shipped.kind is d.Kind.SHIPPED and "SHPABCDEF123456" in shipped.body


def test_event_without_user_is_refused() -> None:
    with pytest.raises(InvalidArgument, match=r"user\.created event has no user id"):
        d.welcome("", "Ada")


@pytest.mark.parametrize(("asked", "got"), [(0, 20), (1, 1), (100, 100), (1000, 100)])
def test_page_size(asked: int, got: int) -> None:
    assert d.page_size(asked) == got


def test_negative_page_size() -> None:
    with pytest.raises(InvalidArgument, match="page_size"):
        d.page_size(-1)


def test_page_token_round_trip() -> None:
    assert d.decode_page_token("", False) is None
    token = d.encode_page_token(42, unread_only=True)
    assert "42" not in token  # opaque
    assert d.decode_page_token(token, True) == 42
    with pytest.raises(InvalidArgument, match="different unread_only"):
        d.decode_page_token(token, False)


@pytest.mark.parametrize("bad", ["garbage!", "bjE6MDo=", "eDoxOjQy", "bjE6MDotMw"])
def test_bad_page_token(bad: str) -> None:
    with pytest.raises(InvalidArgument, match="page_token"):
        d.decode_page_token(bad, False)


def _note(user_id: str) -> d.Notification:
    return d.Notification("n1", user_id, d.Kind.WELCOME, "s", "b", False, 1.0, "e1")


def test_check_owner() -> None:
    note = _note("u1")
    assert d.check_owner(note, "n1", "u1") is note
    with pytest.raises(NotFound, match="notification n1 not found"):
        d.check_owner(note, "n1", "u2")
    with pytest.raises(NotFound, match="notification n1 not found"):
        d.check_owner(None, "n1", "u1")


def test_validate_id() -> None:
    assert d.validate_id(" n1 ") == "n1"
    with pytest.raises(InvalidArgument, match="id is required"):
        d.validate_id("")
