"""Messaging spans of events (OTel messaging conventions, `messaging.system=nats`).

`producer_traceparent` makes the PRODUCER ("create") span of an event being enqueued: its
context is stored with the event (envelope and outbox row) and the relay sends it as the
`traceparent` NATS header. `consumer_span` is the CONSUMER ("process") span of one
delivery: a child of the producer's context (one trace per order) and linked to it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode

from services.common.tracing import (
    PROPAGATOR,
    caller_context,
    remote_unsampled_child,
    traceparent_of,
    unsampled_child,
)

__all__ = ["consumer_span", "producer_traceparent"]

TRACER = trace.get_tracer("shop.events")


def producer_traceparent(subject: str, event_id: str) -> str:
    """End a PRODUCER span for the event now; its traceparent ("" outside a trace)."""
    dropped = unsampled_child()
    if dropped is not None:
        return traceparent_of(dropped)
    span = TRACER.start_span(f"create {subject}", kind=SpanKind.PRODUCER, attributes={
        "messaging.system": "nats", "messaging.operation.type": "create",
        "messaging.operation.name": "create", "messaging.destination.name": subject,
        "messaging.message.id": event_id})
    carrier: dict[str, str] = {}
    PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
    span.end()
    return carrier.get("traceparent", "")


@contextmanager
def consumer_span(subject: str, event_id: str, traceparent: str,
                  consumer: str) -> Iterator[None]:
    """A CONSUMER span around one event's handler, current inside the block."""
    span = remote_unsampled_child(traceparent, "")
    if span is None:
        span = _consumer_span(subject, event_id, traceparent, consumer)
    token = otel_context.attach(trace.set_span_in_context(span))
    try:
        yield
    except BaseException as e:
        span.set_status(Status(StatusCode.ERROR, type(e).__name__))
        span.record_exception(e)
        raise
    finally:
        span.end()
        otel_context.detach(token)


def _consumer_span(subject: str, event_id: str, traceparent: str, consumer: str) -> Span:
    parent = caller_context(traceparent, "")
    links = []
    if parent is not None:
        created = trace.get_current_span(parent).get_span_context()
        if created.is_valid:
            links.append(Link(created))
    return TRACER.start_span(f"process {subject}", context=parent, kind=SpanKind.CONSUMER,
                             links=links, attributes={
                                 "messaging.system": "nats",
                                 "messaging.operation.type": "process",
                                 "messaging.operation.name": "process",
                                 "messaging.destination.name": subject,
                                 "messaging.message.id": event_id,
                                 "messaging.consumer.group.name": consumer})
