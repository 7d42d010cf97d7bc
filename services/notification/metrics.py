"""The notification service's mail delivery series, in the process's registry (served
with every other series at /metrics on NOTIFICATION_METRICS_PORT, see
services/common/metrics.py)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from services.common import metrics

__all__ = ["MailMetrics"]


class MailMetrics:
    """Counters and backlog gauges of the delivery outbox, in the process's registry (or
    `registry`)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else metrics.current().registry
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
        # Read from the delivery outbox at each scrape (the sender's refresher).
        self.pending = Gauge("shop_mail_pending", "Mails owed and not sent yet (PENDING).",
                             registry=self.registry)
        self.oldest_pending = Gauge(
            "shop_mail_pending_oldest_age_seconds",
            "Age of the oldest PENDING mail; 0 when none is owed.", registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)
