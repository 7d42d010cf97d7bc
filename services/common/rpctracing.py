"""Server and client spans of gRPC calls, our own thin ones: grpc.aio's contrib
interceptors swallow CancelledError, which deadlines and breakers rely on.

Spans follow the RPC conventions (name `package.Service/Method`, `rpc.system=grpc`,
`rpc.grpc.status_code`). A server span is an error only for server faults; a client span
for any code but OK (the caller did not get what it asked for: a declined charge shows)."""

from __future__ import annotations

from collections.abc import MutableSequence

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from services.common.tracing import (
    PROPAGATOR,
    caller_context,
    remote_unsampled_child,
    traceparent_of,
    unsampled_child,
)

__all__ = ["ClientSpans", "ServerSpans"]

TRACER = trace.get_tracer("shop.rpc")
_CODE_VALUE = {code.name: code.value[0] for code in grpc.StatusCode}
# What a server span counts as its own fault (OTel's gRPC conventions).
_SERVER_FAULTS = frozenset({"UNKNOWN", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "INTERNAL",
                            "UNAVAILABLE", "DATA_LOSS"})

Started = tuple[Span, object]


def _attrs(name: str) -> dict[str, str]:
    service, _, method = name.rpartition("/")
    return {"rpc.system": "grpc", "rpc.service": service, "rpc.method": method}


def _end(started: Started, code: str, error: bool) -> None:
    span, token = started
    if span.is_recording():
        span.set_attribute("rpc.grpc.status_code", _CODE_VALUE.get(code, 2))
        if error:
            span.set_status(Status(StatusCode.ERROR, code))
        span.end()
    otel_context.detach(token)  # type: ignore[arg-type]


class ServerSpans:
    def start(self, method: str, traceparent: str, tracestate: str) -> Started:
        """A SERVER span for `method` ("/pkg.Svc/Method"), current until `end`."""
        span = remote_unsampled_child(traceparent, tracestate)
        if span is None:
            name = method.lstrip("/")
            span = TRACER.start_span(name, context=caller_context(traceparent, tracestate),
                                     kind=SpanKind.SERVER, attributes=_attrs(name))
        return span, otel_context.attach(trace.set_span_in_context(span))

    @staticmethod
    def end(started: Started, code: str) -> None:
        _end(started, code, code in _SERVER_FAULTS)


class ClientSpans:
    def start(self, name: str) -> Started:
        """A CLIENT span (`name` = "pkg.Svc/Method"), current until `end`."""
        span = unsampled_child()
        if span is None:
            span = TRACER.start_span(name, kind=SpanKind.CLIENT, attributes=_attrs(name))
        return span, otel_context.attach(trace.set_span_in_context(span))

    @staticmethod
    def end(started: Started, code: str) -> None:
        _end(started, code, code != "OK")

    @staticmethod
    def inject(md: MutableSequence[tuple[str, str]]) -> None:
        """Add the current span's traceparent/tracestate to outgoing metadata."""
        span = trace.get_current_span()
        if not span.is_recording() and not span.get_span_context().trace_state:
            traceparent = traceparent_of(span)  # what the propagator would write
            if traceparent:
                md.append(("traceparent", traceparent))
            return
        carrier: dict[str, str] = {}
        PROPAGATOR.inject(carrier)
        md.extend(carrier.items())
