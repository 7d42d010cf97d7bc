"""resolve_user: callers act for themselves; internal callers must name the user."""

from __future__ import annotations

import pytest

from services.common import context
from services.common.errors import InvalidArgument, NotFound, PermissionDenied
from services.common.identity import resolve_user


@pytest.mark.parametrize("requested", ["", "me", "u1"])
def test_caller_gets_own_id(requested: str) -> None:
    with context.bind(user_id="u1"):
        assert resolve_user(requested) == "u1"
        assert resolve_user(requested, for_read=False) == "u1"


def test_other_user_is_not_found_for_reads_and_denied_for_writes() -> None:
    with context.bind(user_id="u1"):
        with pytest.raises(NotFound):
            resolve_user("u2")
        with pytest.raises(PermissionDenied):
            resolve_user("u2", for_read=False)


def test_internal_caller_uses_requested_id() -> None:
    assert context.user_id() == ""
    assert resolve_user("u2") == "u2"


@pytest.mark.parametrize("requested", ["", "me"])
def test_internal_caller_must_name_a_user(requested: str) -> None:
    with pytest.raises(InvalidArgument, match="user_id is required"):
        resolve_user(requested)


def test_bind_restores_previous_values() -> None:
    with context.bind(request_id="r1", user_id="u1", timeout=5):
        left = context.remaining()
        assert left is not None and 4 < left <= 5
        assert (context.request_id(), context.user_id()) == ("r1", "u1")
    assert (context.request_id(), context.user_id(), context.remaining()) == ("", "", None)
