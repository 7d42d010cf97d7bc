"""An event's request id (its correlation id) carried into the code that handles it.

The consumer runs each handler inside `event_scope(env)`: the handler's log lines carry the
request id that started the chain, and every event it enqueues travels with the same
correlation id. `in_scope` keeps that binding for a callable run later (a handler's
after-commit hook, e.g. one that wakes a saga task, which copies the context it starts in).
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol, TypeVar

from services.common import context

__all__ = ["event_scope", "in_scope"]

T = TypeVar("T")


class _Correlated(Protocol):
    @property
    def correlation_id(self) -> str: ...


@contextmanager
def event_scope(env: _Correlated) -> Iterator[None]:
    """Bind the event's correlation id as the request id for the block. Always set, even
    when empty, so nothing of an earlier event of the same batch shows through."""
    token = context.request_id_var.set(env.correlation_id)
    try:
        yield
    finally:
        context.request_id_var.reset(token)


def in_scope(fn: Callable[[], T]) -> Callable[[], T]:
    """`fn` bound to the context values current now (call it from inside the scope)."""
    ctx = contextvars.copy_context()
    return lambda: ctx.run(fn)
