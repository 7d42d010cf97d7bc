"""An event's request id (its correlation id) carried into the code that handles it.

The consumer runs each handler inside `event_scope(env, consumer)`: the handler's log lines
carry the request id that started the chain, every event it enqueues travels with the same
correlation id, and the handler runs in the event's CONSUMER span (eventtracing.py), so
the spans and events it makes belong to the same trace. `in_scope` keeps that binding for
a callable run later (a handler's after-commit hook, e.g. one that wakes a saga task,
which copies the context it starts in).
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol, TypeVar

from services.common import context
from services.common.eventtracing import consumer_span

__all__ = ["event_scope", "in_scope"]

T = TypeVar("T")


class _Correlated(Protocol):
    @property
    def correlation_id(self) -> str: ...
    @property
    def subject(self) -> str: ...
    @property
    def id(self) -> str: ...
    @property
    def traceparent(self) -> str: ...


@contextmanager
def event_scope(env: _Correlated, consumer: str = "") -> Iterator[None]:
    """Bind the event's correlation id as the request id for the block. Always set, even
    when empty, so nothing of an earlier event of the same batch shows through."""
    token = context.request_id_var.set(env.correlation_id)
    try:
        with consumer_span(env.subject, env.id, env.traceparent, consumer):
            yield
    finally:
        context.request_id_var.reset(token)


def in_scope(fn: Callable[[], T]) -> Callable[[], T]:
    """`fn` bound to the context values current now (call it from inside the scope)."""
    ctx = contextvars.copy_context()
    return lambda: ctx.run(fn)
