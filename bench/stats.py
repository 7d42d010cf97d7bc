"""Result records and percentile arithmetic shared by every scenario."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["Measured", "percentile"]


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of `values` (any order); 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100.0 * len(ordered)))
    return float(ordered[min(rank, len(ordered)) - 1])


@dataclass
class Measured:
    """One measured load: successful operations per second and their latency."""

    rps: float
    p50_ms: float
    p99_ms: float
    ok: int = 0
    errors: int = 0
    seconds: float = 0.0
    tool: str = ""
    # What one latency sample is (a request, a publish, a relay batch, ...).
    latency_of: str = "request"
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Measured:
        return cls(**data)

    @classmethod
    def failed(cls, reason: str) -> Measured:
        return cls(0.0, 0.0, 0.0, tool="failed", extra={"failure": reason})
