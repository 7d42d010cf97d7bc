"""The process's Prometheus metrics: one registry per process, served as text at /metrics
on `<SERVICE>_METRICS_PORT` (default the gRPC port + 1000; 0 picks a free port, which the
ready file then names as `metrics_port`).

`run_service` makes one `ShopMetrics` and binds it (`bind`) before the service is built,
so every part made inside (per-call wrapper, clients, consumers, relay, database, saga)
finds it with `current()` once, at construction; the per-call cost is then a cached child's
observe(). Gauges that need a query (outbox backlog, consumer lag) are refreshed only when
scraped, by the async refreshers parts register with `add_refresher`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from contextvars import ContextVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from services.common.cancellation import within
from services.common.settings import Settings

__all__ = ["MetricsServer", "ShopMetrics", "bind", "current", "metrics_port"]

log = logging.getLogger("shop.metrics")

Refresher = Callable[[], Awaitable[None]]

# Latency buckets from a local hop (sub-millisecond) to a deadline (seconds).
RPC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
               5.0, 10.0)
COMMIT_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                  0.25, 1.0)
SAGA_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
BREAKER_VALUE = {"closed": 0.0, "half-open": 1.0, "open": 2.0}
REFRESH_TIMEOUT_S = 2.0

_current: ContextVar[ShopMetrics | None] = ContextVar("shop_metrics", default=None)


class _BreakerCollector(Collector):
    """Read at scrape time from the process's breakers (its `Breakers.states`)."""

    def __init__(self, states: Callable[[], Mapping[str, str]]) -> None:
        self._states = states

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "shop_breaker_state",
            "Circuit breaker per downstream service: 0 closed, 1 half-open, 2 open.",
            labels=["downstream"])
        for service, state in self._states().items():
            family.add_metric([service], BREAKER_VALUE.get(state, -1.0))
        yield family


class ShopMetrics:
    """Every series a shop service process exports (see docs/metrics.md)."""

    def __init__(self, service: str = "",
                 breaker_states: Callable[[], Mapping[str, str]] = dict) -> None:
        self.service = service
        r = self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=r)  # process_cpu_seconds_total, process_resident_memory_bytes
        r.register(_BreakerCollector(breaker_states))
        self.rpc_server = Histogram(
            "shop_rpc_server_duration_seconds",
            "Handled gRPC calls by full method and status code (the _count is the calls).",
            ["method", "code"], buckets=RPC_BUCKETS, registry=r)
        self.rpc_client = Histogram(
            "shop_rpc_client_duration_seconds",
            "Outgoing gRPC calls (retries included) by full method and status code.",
            ["method", "code"], buckets=RPC_BUCKETS, registry=r)
        self.outbox_backlog = Gauge(
            "shop_outbox_backlog_events", "Outbox rows not yet acknowledged by JetStream.",
            registry=r)
        self.outbox_oldest_age = Gauge(
            "shop_outbox_oldest_unsent_age_seconds",
            "Age of the oldest outbox row not yet acknowledged (0 when none).", registry=r)
        self.outbox_published = Counter(
            "shop_outbox_published_events", "Events the relay published (acknowledged).",
            registry=r)
        self.consumer_deliveries = Counter(
            "shop_consumer_deliveries", "Messages fetched by a durable consumer.",
            ["consumer"], registry=r)
        self.consumer_redeliveries = Counter(
            "shop_consumer_redeliveries", "Fetched messages delivered more than once.",
            ["consumer"], registry=r)
        self.consumer_handled = Counter(
            "shop_consumer_handled_events", "Events whose handler ran and committed.",
            ["consumer"], registry=r)
        self.consumer_dead_letters = Counter(
            "shop_consumer_dead_letters", "Events moved to the dead-letter stream.",
            ["consumer"], registry=r)
        self.consumer_lag = Gauge(
            "shop_consumer_lag_events",
            "Messages in the stream not yet delivered to the consumer (at scrape time).",
            ["consumer"], registry=r)
        self.saga_steps = Counter(
            "shop_saga_steps", "Saga step attempts by step and outcome.",
            ["step", "outcome"], registry=r)
        self.saga_duration = Histogram(
            "shop_saga_duration_seconds",
            "From the order's creation to its saga's end, by final order status.",
            ["result"], buckets=SAGA_BUCKETS, registry=r)
        self.db_commit = Histogram(
            "shop_db_commit_duration_seconds",
            "Group commits: one write transaction of the service's database, with its fsync.",
            buckets=COMMIT_BUCKETS, registry=r)
        self._refreshers: list[Refresher] = []

    def add_refresher(self, fn: Refresher) -> None:
        """`await fn()` before each scrape (it sets gauges); failures are logged and skipped."""
        self._refreshers.append(fn)

    def remove_refresher(self, fn: Refresher) -> None:
        with contextlib.suppress(ValueError):
            self._refreshers.remove(fn)

    async def render(self) -> bytes:
        for fn in list(self._refreshers):
            try:
                await within(fn(), REFRESH_TIMEOUT_S)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.debug("metrics refresher failed", exc_info=True)
        return generate_latest(self.registry)


def current() -> ShopMetrics:
    """The process's metrics when bound; else a fresh, unserved set (a part built outside a
    service process, e.g. in a unit test, still counts without sharing state)."""
    got = _current.get()
    return got if got is not None else ShopMetrics()


@contextlib.contextmanager
def bind(metrics: ShopMetrics) -> Iterator[ShopMetrics]:
    token = _current.set(metrics)
    try:
        yield metrics
    finally:
        _current.reset(token)


def bind_process(metrics: ShopMetrics) -> None:
    """Bind for the rest of the current context (a process's main task)."""
    _current.set(metrics)


def metrics_port(settings: Settings) -> int:
    """`<SERVICE>_METRICS_PORT`; by default the gRPC port + 1000 (0 with a port of 0)."""
    default = settings.port + 1000 if 0 < settings.port <= 64535 else 0
    port = settings.serving.metrics_port
    return default if port is None else port


class MetricsServer:
    """A minimal HTTP/1.0 server: GET /metrics answers the registry's text, anything else
    404. Never stops the service: a port it cannot bind is logged and left alone."""

    def __init__(self, metrics: ShopMetrics, host: str, port: int) -> None:
        self.metrics = metrics
        self.host = host
        self.port = port
        self.bound_port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        """Bind and serve in the background; the bound port, 0 when it could not bind."""
        try:
            self._server = await asyncio.start_server(self._serve, self.host, self.port)
        except (OSError, OverflowError) as e:
            log.warning("metrics not served", extra={"port": self.port, "error": str(e)})
            return 0
        self.bound_port = int(self._server.sockets[0].getsockname()[1])
        log.info("metrics served",
                 extra={"url": f"http://{self.host}:{self.bound_port}/metrics"})
        return self.bound_port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await within(self._server.wait_closed(), 1.0)
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await within(reader.readuntil(b"\r\n\r\n"), 5.0)
            method, _, rest = request.partition(b" ")
            path = rest.split(b" ", 1)[0].split(b"?", 1)[0]
            if method == b"GET" and path == b"/metrics":
                status, ctype, body = "200 OK", CONTENT_TYPE_LATEST, await self.metrics.render()
            else:
                status, ctype, body = "404 Not Found", "text/plain", b"not found\n"
            writer.write(f"HTTP/1.0 {status}\r\nContent-Type: {ctype}\r\n"
                         f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                         + body)
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                TimeoutError):
            pass  # a client that went away or sent garbage gets nothing
        finally:
            writer.close()
