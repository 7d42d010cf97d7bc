"""The SDK set-up reads the standard OTEL_* variables; without an endpoint nothing is
exported; an unknown protocol is refused with a message naming the accepted ones. The
children of unsampled parents made without the SDK's sampling pass are the spans the SDK
would make, and only when the sampler is bound to drop them."""

from __future__ import annotations

from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
    OTLPSpanExporter as GrpcExporter,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as HttpExporter,
)
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_ON,
    ParentBased,
    ParentBasedTraceIdRatio,
    Sampler,
    TraceIdRatioBased,
)

from services.common import tracing
from services.common.settings import load_settings

OTEL_VARS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
             "OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
             "OTEL_SERVICE_NAME", "OTEL_SDK_DISABLED", "OTEL_TRACES_SAMPLER",
             "OTEL_TRACES_SAMPLER_ARG")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # load_settings makes the data dir
    for name in OTEL_VARS:
        monkeypatch.delenv(name, raising=False)


def _exporter() -> SpanExporter | None:
    """The exporter of a process started with the environment as it is now."""
    return tracing._exporter(load_settings("order").tracing)


def test_no_endpoint_no_exporter() -> None:
    assert _exporter() is None


def test_http_protobuf_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    assert isinstance(_exporter(), HttpExporter)


def test_grpc_protocol(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    exporter = _exporter()
    assert isinstance(exporter, GrpcExporter)
    exporter.shutdown()


def test_unknown_protocol_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
    with pytest.raises(ValueError, match="http/protobuf, grpc"):
        _exporter()


def test_sampler_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.1")
    # What setup_tracing builds on: the SDK's provider reads the sampler variables.
    desc = TracerProvider().sampler.get_description()
    assert desc.startswith("ParentBased") and "0.1" in desc


# The cheap path for children of unsampled parents must make the very span the SDK makes.

_PARENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
_PARENT_SPAN = "b7ad6b7169203331"
UNSAMPLED = f"00-{_PARENT_TRACE}-{_PARENT_SPAN}-00"
SAMPLED = f"00-{_PARENT_TRACE}-{_PARENT_SPAN}-01"


def _installed(monkeypatch: pytest.MonkeyPatch, provider: object) -> None:
    """`provider` as the process's tracer provider, for this test only."""
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: provider)


def _sdk_child(provider: TracerProvider, traceparent: str) -> trace.Span:
    parent = tracing.PROPAGATOR.extract({"traceparent": traceparent})
    return provider.get_tracer("test").start_span("child", context=parent)


def test_an_unsampled_callers_child_is_the_span_the_sdk_makes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    provider = TracerProvider(sampler=ParentBasedTraceIdRatio(0.1))
    _installed(monkeypatch, provider)
    fast = tracing.remote_unsampled_child(UNSAMPLED, "")
    sdk = _sdk_child(provider, UNSAMPLED)
    assert fast is not None and not fast.is_recording() and not sdk.is_recording()
    got, want = fast.get_span_context(), sdk.get_span_context()
    assert (got.trace_id, got.trace_flags, got.trace_state, got.is_remote) == (
        want.trace_id, want.trace_flags, want.trace_state, want.is_remote)
    assert got.span_id not in (0, int(_PARENT_SPAN, 16))
    # Its children are cheap too, and what goes downstream is what the propagator writes.
    child = tracing.unsampled_child(got)
    assert child is not None and child.get_span_context().trace_id == got.trace_id
    carrier: dict[str, str] = {}
    tracing.PROPAGATOR.inject(carrier, context=trace.set_span_in_context(child))
    assert tracing.traceparent_of(child) == carrier["traceparent"]


@pytest.mark.parametrize(("traceparent", "tracestate"), [
    (SAMPLED, ""),  # sampled: the SDK records it
    (UNSAMPLED, "vendor=1"),  # a trace state to carry: the propagator parses it
    (UNSAMPLED.upper(), ""),  # not the plain lower-case form
    ("01" + UNSAMPLED[2:], ""),  # another version
    (UNSAMPLED + "-x", ""),
    (f"00-{'0' * 32}-{_PARENT_SPAN}-00", ""),  # invalid ids
    (f"00-{_PARENT_TRACE}-{'0' * 16}-00", ""),
])
def test_anything_else_goes_through_the_sdk(monkeypatch: pytest.MonkeyPatch,
                                            traceparent: str, tracestate: str) -> None:
    _installed(monkeypatch, TracerProvider(sampler=ParentBasedTraceIdRatio(0.1)))
    assert tracing.remote_unsampled_child(traceparent, tracestate) is None


@pytest.mark.parametrize("sampler", [
    TraceIdRatioBased(0.1),  # decides by trace id whatever the parent said
    ALWAYS_ON,
    ParentBased(ALWAYS_ON, remote_parent_not_sampled=ALWAYS_ON),
    ParentBased(ALWAYS_ON, local_parent_not_sampled=ALWAYS_ON),
])
def test_a_sampler_that_may_keep_the_child_decides_itself(
        monkeypatch: pytest.MonkeyPatch, sampler: Sampler) -> None:
    _installed(monkeypatch, TracerProvider(sampler=sampler))
    assert tracing.remote_unsampled_child(UNSAMPLED, "") is None
    parent = trace.NonRecordingSpan(trace.SpanContext(
        int(_PARENT_TRACE, 16), int(_PARENT_SPAN, 16), is_remote=False))
    assert tracing.unsampled_child(parent.get_span_context()) is None


def test_without_the_sdk_nothing_is_made_cheaply(monkeypatch: pytest.MonkeyPatch) -> None:
    _installed(monkeypatch, trace.ProxyTracerProvider())
    assert tracing.remote_unsampled_child(UNSAMPLED, "") is None


def test_roots_and_sampled_parents_are_the_sdks(monkeypatch: pytest.MonkeyPatch) -> None:
    _installed(monkeypatch, TracerProvider(sampler=ParentBasedTraceIdRatio(0.1)))
    assert tracing.unsampled_child(trace.INVALID_SPAN_CONTEXT) is None
    sampled = trace.SpanContext(int(_PARENT_TRACE, 16), int(_PARENT_SPAN, 16),
                                is_remote=False,
                                trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED))
    assert tracing.unsampled_child(sampled) is None
    assert tracing.traceparent_of(trace.INVALID_SPAN) == ""
