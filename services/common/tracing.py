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
from collections.abc import Callable

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from services.common.config import TracingConfig

__all__ = ["PROPAGATOR", "current_trace_id", "setup_tracing"]

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
