"""A CLIENT span per unit of work that writes, a child of whatever span is current (an
RPC, a delivery, a saga step), so an order's trace shows where its commits (and their
fsyncs) went. Outside a trace nothing is made: background loops (the relay marking rows
sent, the dispatcher's polls) would otherwise start a root span per write."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from opentelemetry import trace
from opentelemetry.trace import SpanKind

__all__ = ["write_span"]

TRACER = trace.get_tracer("shop.db")


@contextlib.contextmanager
def write_span(system: str, namespace: str) -> Iterator[None]:
    """`db.system` is "sqlite" or "postgresql"; `namespace` the file's or database's name."""
    if not trace.get_current_span().is_recording():
        yield
        return
    with TRACER.start_as_current_span(
            f"write {namespace}", kind=SpanKind.CLIENT,
            attributes={"db.system": system, "db.namespace": namespace,
                        "db.operation.name": "write"}):
        yield
