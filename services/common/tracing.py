"""OpenTelemetry SDK set-up of a process, from the standard variables.

`OTEL_SERVICE_NAME` (default `shop-<service>`), `OTEL_RESOURCE_ATTRIBUTES`,
`OTEL_TRACES_SAMPLER`/`_ARG` (default `parentbased_always_on`: a trace is whole or absent),
`OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT` and `..._PROTOCOL` (`http/protobuf`, the default, or
`grpc`), `OTEL_BSP_*` for the batch processor, `OTEL_SDK_DISABLED=true` for none at all.
Without an endpoint spans are still made (their ids reach logs and downstream calls), but
nothing is exported.

The W3C trace context travels as `traceparent`/`tracestate` in gRPC metadata and NATS
headers (`rpctracing.py`, `eventtracing.py`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased
from opentelemetry.trace import NonRecordingSpan, Span, SpanContext, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.trace.span import DEFAULT_TRACE_STATE, TraceState

from services.common.config import TracingConfig

__all__ = ["PROPAGATOR", "caller_context", "current_trace_id", "remote_unsampled_child",
           "setup_tracing", "traceparent_of", "unsampled_child"]

log = logging.getLogger("shop.tracing")

PROTOCOLS = ("http/protobuf", "grpc")
# W3C trace context only (stateless: one for every caller).
PROPAGATOR = TraceContextTextMapPropagator()


def _exporter(config: TracingConfig) -> SpanExporter | None:
    if not config.endpoint:
        return None
    protocol = config.protocol
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcExporter,
        )
        return GrpcExporter()
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter as HttpExporter,
        )
        return HttpExporter()
    raise ValueError(f"OTEL_EXPORTER_OTLP_PROTOCOL must be one of {', '.join(PROTOCOLS)},"
                     f" got {protocol!r}")


def setup_tracing(service: str, instance_id: str, config: TracingConfig,
                  version: str) -> Callable[[], None]:
    """Install the process's tracer provider; returns its shutdown (flushes the exporter)."""
    if config.disabled:
        return lambda: None
    attributes = {"service.instance.id": instance_id, "service.version": version}
    if not config.service_named:
        attributes["service.name"] = f"shop-{service}"
    # Resource.create adds OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME; the sampler
    # comes from OTEL_TRACES_SAMPLER (TracerProvider's default reads it).
    provider = TracerProvider(resource=Resource.create(attributes))
    exporter = _exporter(config)
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter))
        log.info("traces exported", extra={"exporter": type(exporter).__module__})
    trace.set_tracer_provider(provider)
    return provider.shutdown


def current_trace_id() -> str:
    """The current span's trace id (32 hex digits), "" outside a span."""
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else ""


# Most spans are children of a parent that was not sampled (a 10 % ratio leaves nine in ten
# traces out), and the SDK makes each of them through its whole sampling pass: ~6 us for a
# server span (extract the header, sample, make ids), ~3 us for a local child, against ~1
# us below. The span is the same one the SDK would make.
_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_NOT_SAMPLED = TraceFlags(TraceFlags.DEFAULT)


def _dropping_ids() -> IdGenerator | None:
    """The installed provider's id generator when its sampler is parent-based and drops
    every child of an unsampled parent (the default of every `parentbased_*` sampler);
    None otherwise (no SDK, another sampler): then the SDK decides."""
    provider = trace.get_tracer_provider()
    sampler = getattr(provider, "sampler", None)
    if (not isinstance(sampler, ParentBased)
            or getattr(sampler, "_remote_parent_not_sampled", None) is not ALWAYS_OFF
            or getattr(sampler, "_local_parent_not_sampled", None) is not ALWAYS_OFF):
        return None
    ids = getattr(provider, "id_generator", None)
    return ids if isinstance(ids, IdGenerator) else None


def _dropped_child(trace_id: int, trace_state: TraceState) -> Span | None:
    """The span the SDK makes for a child of an unsampled parent in `trace_id` (a new span
    id, not sampled, the parent's trace state), or None when its sampler might keep it."""
    ids = _dropping_ids()
    if ids is None:
        return None
    return NonRecordingSpan(SpanContext(trace_id, ids.generate_span_id(), is_remote=False,
                                        trace_flags=_NOT_SAMPLED, trace_state=trace_state))


def unsampled_child(parent: SpanContext | None = None) -> Span | None:
    """The non-recording child the sampler is bound to make of `parent` (default: the
    current span), or None when the SDK must decide: `parent` invalid (a root) or
    sampled, or a sampler that might keep the child."""
    if parent is None:
        parent = trace.get_current_span().get_span_context()
    if not parent.is_valid or parent.trace_flags.sampled:
        return None
    return _dropped_child(parent.trace_id, parent.trace_state)


def remote_unsampled_child(traceparent: str, tracestate: str) -> Span | None:
    """`unsampled_child` of a caller's `traceparent` in its plain version-00 form and
    without a `tracestate`; None for anything else (no header among them), which goes
    through the propagator."""
    if tracestate:
        return None
    match = _TRACEPARENT.fullmatch(traceparent)
    if match is None or int(match[3], 16) & 1:
        return None
    trace_id, span_id = int(match[1], 16), int(match[2], 16)
    if not trace_id or not span_id:
        return None  # invalid ids: the propagator starts a new trace
    return _dropped_child(trace_id, DEFAULT_TRACE_STATE)


def caller_context(traceparent: str, tracestate: str) -> Context | None:
    """The context a caller's W3C headers carry (the propagator's reading), None without."""
    if not traceparent:
        return None
    carrier = {"traceparent": traceparent}
    if tracestate:
        carrier["tracestate"] = tracestate
    return PROPAGATOR.extract(carrier)


def traceparent_of(span: Span) -> str:
    """The W3C traceparent of `span` (what the propagator would inject; "" if invalid)."""
    ctx = span.get_span_context()
    if not ctx.is_valid:
        return ""
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"
