"""The notification service's Prometheus metrics: mail delivery counters, served as text
at /metrics on NOTIFICATION_METRICS_PORT (default: the gRPC port + 1000)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from services.common.settings import Settings, env_int

__all__ = ["MailMetrics", "MetricsEndpoint", "metrics_port"]

log = logging.getLogger("shop.notification.metrics")


class MailMetrics:
    """Counters of the delivery outbox; one registry per process (no global state)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.sent = Counter("shop_mail_sent", "Mails accepted by the SMTP server.",
                            registry=self.registry)
        self.failed = Counter(
            "shop_mail_failed", "Mails given up for good, by why: refused (a 5xx answer "
            "or a bad address) or expired (temporary failures for too long).",
            ["reason"], registry=self.registry)
        self.retried = Counter(
            "shop_mail_retried", "Attempts that failed for a temporary reason (server down, "
            "slow or answering 4xx) and were scheduled again.", registry=self.registry)
        self.breaker_rejected = Counter(
            "shop_mail_breaker_rejected", "Rounds skipped because the SMTP breaker was open.",
            registry=self.registry)
        for reason in ("refused", "expired"):
            self.failed.labels(reason=reason)
        # Read from the delivery outbox at each scrape (see MetricsEndpoint's refresh).
        self.pending = Gauge("shop_mail_pending", "Mails owed and not sent yet (PENDING).",
                             registry=self.registry)
        self.oldest_pending = Gauge(
            "shop_mail_pending_oldest_age_seconds",
            "Age of the oldest PENDING mail; 0 when none is owed.", registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def metrics_port(settings: Settings) -> int:
    """NOTIFICATION_METRICS_PORT; by default the gRPC port + 1000 (0 with a port of 0)."""
    default = settings.port + 1000 if 0 < settings.port <= 64535 else 0
    return env_int("NOTIFICATION_METRICS_PORT", default)


class MetricsEndpoint:
    """A minimal HTTP/1.0 server: GET /metrics answers the registry's text; anything else
    404. Never stops the service: a port it cannot bind is logged and left alone."""

    def __init__(self, metrics: MailMetrics, host: str, port: int,
                 refresh: Callable[[], Awaitable[None]] | None = None) -> None:
        self.metrics = metrics
        self.refresh = refresh  # brings the gauges up to date before a scrape
        self.host = host
        self.port = port
        self.bound_port = 0

    async def run(self) -> None:
        try:
            server = await asyncio.start_server(self._serve, self.host, self.port)
        except (OSError, OverflowError) as e:
            log.warning("metrics not served", extra={"port": self.port, "error": str(e)})
            await asyncio.Event().wait()  # a background task runs until cancelled
            return
        self.bound_port = server.sockets[0].getsockname()[1]
        log.info("metrics served", extra={"url": f"http://{self.host}:{self.bound_port}"
                                                  "/metrics"})
        async with server:
            await server.serve_forever()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
            method, _, rest = request.partition(b" ")
            path = rest.split(b" ", 1)[0].split(b"?", 1)[0]
            if method == b"GET" and path == b"/metrics":
                if self.refresh is not None:
                    await self.refresh()
                status, ctype, body = "200 OK", CONTENT_TYPE_LATEST, self.metrics.render()
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
