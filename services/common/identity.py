"""Who a request acts for: the caller from `x-user-id`, or the id an internal caller names."""

from __future__ import annotations

from services.common import context
from services.common.errors import InvalidArgument, NotFound, PermissionDenied

_SELF_ALIASES = ("", "me")


def resolve_user(requested: str, *, for_read: bool = True) -> str:
    """The user id to act on.

    With `x-user-id` (a user via the gateway): "", "me" or their own id mean the caller;
    another user's id is refused as NotFound for reads (it must not reveal that the user
    exists) and PermissionDenied for writes. Without it (an internal caller or grpcurl)
    the requested id is used and must be given.
    """
    caller = context.user_id()
    if caller:
        if requested in _SELF_ALIASES or requested == caller:
            return caller
        if for_read:
            raise NotFound(f"user {requested} not found")
        raise PermissionDenied("cannot act on another user's resources")
    if requested in _SELF_ALIASES:
        raise InvalidArgument("user_id is required")
    return requested
