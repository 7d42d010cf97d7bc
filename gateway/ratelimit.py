"""Per-identity rate limiting (user id, else client address) with `limits`, in memory.

Each identity has its own window, so one caller's excess never throttles another.
"""

from __future__ import annotations

import math
import time

from limits import parse
from limits.storage import MemoryStorage
from limits.strategies import FixedWindowRateLimiter

DEFAULT_LIMIT = "10000/second"
_DISABLED = frozenset({"", "0", "off", "none", "unlimited"})


class RateLimiter:
    """`check(identity)` returns None when allowed, else the headers of a 429."""

    def __init__(self, spec: str = DEFAULT_LIMIT) -> None:
        self.spec = spec
        self.enabled = spec.strip().lower() not in _DISABLED
        self._storage = MemoryStorage()
        # Fixed window: one counter per identity per window, the cheapest check per request.
        self._limiter = FixedWindowRateLimiter(self._storage)
        self._item = parse(spec) if self.enabled else None

    def check(self, identity: str) -> list[tuple[bytes, bytes]] | None:
        item = self._item
        if item is None or self._limiter.hit(item, identity):
            return None
        stats = self._limiter.get_window_stats(item, identity)
        reset_in = max(1, math.ceil(stats.reset_time - time.time()))
        return [
            (b"retry-after", str(reset_in).encode()),
            (b"ratelimit-limit", str(item.amount).encode()),
            (b"ratelimit-remaining", str(max(0, stats.remaining)).encode()),
            (b"ratelimit-reset", str(reset_in).encode()),
        ]
