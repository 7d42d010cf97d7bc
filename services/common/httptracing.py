"""The gateway's HTTP SERVER span: the root of a request's trace (or a child of the
caller's `traceparent`), named `METHOD route-template` (bounded), with its status."""

from __future__ import annotations

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from services.common.tracing import caller_context, remote_unsampled_child

__all__ = ["HttpSpans"]

TRACER = trace.get_tracer("shop.http")

Started = tuple[Span, object]


class HttpSpans:
    def start(self, method: str, route: str, traceparent: str, tracestate: str) -> Started:
        dropped = remote_unsampled_child(traceparent, tracestate)
        if dropped is not None:
            return dropped, otel_context.attach(trace.set_span_in_context(dropped))
        span = TRACER.start_span(f"{method} {route}",
                                 context=caller_context(traceparent, tracestate),
                                 kind=SpanKind.SERVER,
                                 attributes={"http.request.method": method,
                                             "http.route": route})
        return span, otel_context.attach(trace.set_span_in_context(span))

    @staticmethod
    def end(started: Started, status: int) -> None:
        span, token = started
        span.set_attribute("http.response.status_code", status)
        if status >= 500:
            span.set_status(Status(StatusCode.ERROR))
        span.end()
        otel_context.detach(token)  # type: ignore[arg-type]
