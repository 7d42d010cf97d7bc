"""The saga's series (see services/common/metrics.py): step attempts by step and outcome,
and each saga's duration (order created -> saga ended) by the status the order ended in.
Steps, outcomes and statuses are closed enums: the label sets stay bounded."""

from __future__ import annotations

from prometheus_client import Counter

from services.common import metrics

__all__ = ["SagaMetrics"]


class SagaMetrics:
    def __init__(self) -> None:
        m = metrics.current()
        self._steps = m.saga_steps
        self._duration = m.saga_duration
        self._step_children: dict[tuple[str, str], Counter] = {}

    def attempted(self, step: str, outcome: str) -> None:
        key = (step, outcome)
        child = self._step_children.get(key)
        if child is None:
            child = self._step_children[key] = self._steps.labels(step, outcome)
        child.inc()

    def ended(self, result: str, seconds: float) -> None:
        """`seconds` since the order's creation; a resumed saga counts its whole life."""
        if seconds >= 0:
            self._duration.labels(result).observe(seconds)
