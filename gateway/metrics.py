"""Prometheus metrics of the gateway, in a registry of its own per app."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
_BREAKER_VALUE = {"closed": 0.0, "half-open": 1.0, "open": 2.0}


class _BreakerCollector(Collector):
    def __init__(self, states: Callable[[], Mapping[str, str]]) -> None:
        self._states = states

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "shop_gateway_breaker_state",
            "Circuit breaker per downstream: 0 closed, 1 half-open, 2 open",
            labels=["service"],
        )
        for service, state in sorted(self._states().items()):
            family.add_metric([service], _BREAKER_VALUE.get(state, -1.0))
        yield family


class GatewayMetrics:
    def __init__(self, breaker_states: Callable[[], Mapping[str, str]]) -> None:
        self.registry = CollectorRegistry()
        self._requests = Counter(
            "shop_gateway_requests",
            "HTTP requests by route template, method and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self._latency = Histogram(
            "shop_gateway_request_duration_seconds",
            "HTTP request latency by route template",
            ["route"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0),
        )
        self._upstream_errors = Counter(
            "shop_gateway_upstream_errors",
            "Failed downstream calls by service and gRPC status",
            ["service", "code"],
            registry=self.registry,
        )
        self.registry.register(_BreakerCollector(breaker_states))
        # labels() costs a lock and a dict walk; the children are cached per key instead.
        self._request_children: dict[tuple[str, str, int], Counter] = {}
        self._latency_children: dict[str, Histogram] = {}

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        counter = self._request_children.get(key)
        if counter is None:
            counter = self._requests.labels(route, method, str(status))
            self._request_children[key] = counter
        counter.inc()
        hist = self._latency_children.get(route)
        if hist is None:
            hist = self._latency.labels(route)
            self._latency_children[route] = hist
        hist.observe(seconds)

    def upstream_error(self, service: str, code: str) -> None:
        self._upstream_errors.labels(service, code).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
