"""Per-call context: request id, caller's user id and deadline.

The per-call wrapper (interceptors.py) sets these for every incoming call (each grpc.aio
call runs in its own task, so values never leak between calls); outgoing calls read them.
Code that starts work outside a gRPC call (the gateway, background tasks) uses `bind()`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

# Absolute deadline on the time.monotonic() clock; None means no deadline.
_request_id: ContextVar[str] = ContextVar("shop_request_id", default="")
_user_id: ContextVar[str] = ContextVar("shop_user_id", default="")
_deadline: ContextVar[float | None] = ContextVar("shop_deadline", default=None)

request_id_var = _request_id
user_id_var = _user_id
deadline_var = _deadline


def new_request_id() -> str:
    return uuid.uuid4().hex


def request_id() -> str:
    """The current request id, "" outside a request."""
    return _request_id.get()


def user_id() -> str:
    """The caller's user id from `x-user-id`, "" for internal callers."""
    return _user_id.get()


def deadline() -> float | None:
    """The absolute deadline (time.monotonic() clock), None when there is none."""
    return _deadline.get()


def remaining() -> float | None:
    """Seconds left before the current deadline (may be <= 0), None without one."""
    dl = _deadline.get()
    if dl is None:
        return None
    return dl - time.monotonic()


@contextmanager
def bind(
    *,
    request_id: str | None = None,
    user_id: str | None = None,
    timeout: float | None = None,
) -> Iterator[None]:
    """Set context values for the block; unset arguments keep their current values."""
    rid_token = _request_id.set(request_id) if request_id is not None else None
    uid_token = _user_id.set(user_id) if user_id is not None else None
    dl_token = _deadline.set(time.monotonic() + timeout) if timeout is not None else None
    try:
        yield
    finally:
        if dl_token is not None:
            _deadline.reset(dl_token)
        if uid_token is not None:
            _user_id.reset(uid_token)
        if rid_token is not None:
            _request_id.reset(rid_token)
