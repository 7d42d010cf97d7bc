"""A durable consumer's series (see metrics.py): its label children bound once, the lag
read from JetStream only when the process is scraped."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from nats.aio.msg import Msg

from services.common import metrics

__all__ = ["ConsumerMetrics"]


class ConsumerMetrics:
    def __init__(self, durable: str, lag: Callable[[], Awaitable[int]]) -> None:
        m = self._m = metrics.current()
        self.deliveries = m.consumer_deliveries.labels(durable)
        self.redeliveries = m.consumer_redeliveries.labels(durable)
        self.handled = m.consumer_handled.labels(durable)
        self.dead_letters = m.consumer_dead_letters.labels(durable)
        self._lag_gauge = m.consumer_lag.labels(durable)
        self._lag = lag

    def delivered(self, msgs: Sequence[Msg]) -> None:
        self.deliveries.inc(len(msgs))
        again = 0
        for msg in msgs:
            try:
                if msg.metadata.num_delivered > 1:
                    again += 1
            except Exception:  # not a JetStream message (a test's hand-made one)
                continue
        if again:
            self.redeliveries.inc(again)

    async def _refresh(self) -> None:
        self._lag_gauge.set(await self._lag())

    def serve(self) -> None:
        self._m.add_refresher(self._refresh)

    def unserve(self) -> None:
        self._m.remove_refresher(self._refresh)
