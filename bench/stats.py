"""Result records and percentile arithmetic shared by every scenario."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

__all__ = ["Measured", "best_round", "percentile"]


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


def best_round(rounds: Sequence[Measured]) -> Measured:
    """The round that served the most operations per second: a whole round, so its
    latency and CPU figures belong together. With several rounds, the chosen one lists
    them all in `extra["rounds"]`; a failed round is chosen only when every one failed."""
    if not rounds:
        raise ValueError("no rounds")
    best = max(rounds, key=lambda m: (m.ok > 0, m.rps))
    if len(rounds) == 1:
        return best
    summary = [{"rps": round(m.rps, 1), "p50_ms": round(m.p50_ms, 2),
                "p99_ms": round(m.p99_ms, 2), "ok": m.ok, "tool": m.tool,
                "cpu_ms_per_op": m.extra.get("cpu_ms_per_op_total")} for m in rounds]
    return replace(best, extra={**best.extra, "rounds": summary})
