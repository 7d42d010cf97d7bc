"""A span per saga step attempt (`saga <step>`, with the order id, attempt and outcome): a
child of the span the saga runs under (the CreateOrder call, or the event that woke it),
the parent of the step's downstream call."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry import trace
from opentelemetry.trace import Span, Status, StatusCode

from services.common.tracing import unsampled_child

__all__ = ["record_outcome", "step_span"]

TRACER = trace.get_tracer("shop.saga")


@contextmanager
def step_span(order_id: str, step: str, attempt: int) -> Iterator[Span]:
    dropped = unsampled_child()
    if dropped is not None:  # a trace left out by the sampler: the same span, made cheaply
        with trace.use_span(dropped, end_on_exit=True):
            yield dropped
        return
    with TRACER.start_as_current_span(f"saga {step}", attributes={
            "shop.order.id": order_id, "shop.saga.step": step,
            "shop.saga.attempt": attempt}) as span:
        yield span


def record_outcome(span: Span, outcome: str, error: str) -> None:
    span.set_attribute("shop.saga.outcome", outcome)
    if outcome != "succeeded":
        span.set_status(Status(StatusCode.ERROR, error or outcome))
