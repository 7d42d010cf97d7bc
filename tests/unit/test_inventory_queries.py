"""Inventory's query rules without I/O: a time to travel to, history pages and tokens."""

from __future__ import annotations

import pytest

from services.common.errors import InvalidArgument
from services.inventory import domain as d

NOW = 1_800_000_000.0


def test_as_of_is_seconds_with_nanos() -> None:
    assert d.validate_as_of(1_700_000_000, 500_000_000) == 1_700_000_000.5
    assert d.validate_as_of(int(NOW) + 3600, 0) == NOW + 3600  # still to come: the stock now


@pytest.mark.parametrize(("seconds", "nanos", "message"), [
    (1, -1, "as_of.nanos must be between 0 and 999999999, got -1"),
    (1, 1_000_000_000, "as_of.nanos must be between"),
    (253_402_300_800, 0, "outside 0001-01-01..9999-12-31"),
    (-62_135_596_801, 0, "outside 0001-01-01..9999-12-31"),
])
def test_a_bad_as_of_says_what_is_wrong(seconds: int, nanos: int, message: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        d.validate_as_of(seconds, nanos)
    assert message in str(info.value)


@pytest.mark.parametrize(("requested", "size"), [(0, 20), (1, 1), (100, 100), (5000, 100)])
def test_page_size_defaults_and_caps(requested: int, size: int) -> None:
    assert d.page_size(requested) == size


def test_a_negative_page_size_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="page_size must not be negative, got -3"):
        d.page_size(-3)


def test_history_token_round_trips_for_its_product_only() -> None:
    token = d.encode_history_token("mug", 41)
    assert d.decode_history_token(token, "mug") == 41
    assert d.decode_history_token("", "mug") is None
    with pytest.raises(InvalidArgument, match="made for a different product_id"):
        d.decode_history_token(token, "pen")


@pytest.mark.parametrize("token", ["junk", "!!", d.encode_history_token("mug", 1),
                                   "WyJtdWciLCJ4Il0", "WyJtdWciLHRydWVd", "bnVsbA"])
def test_a_token_not_made_here_is_refused(token: str) -> None:
    with pytest.raises(InvalidArgument, match="page_token is not valid"):
        d.decode_history_token(token, "mug")
