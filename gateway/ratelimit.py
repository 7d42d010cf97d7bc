"""Per-identity rate limiting (user id, else client address), fixed window, in memory.

Each identity has its own window, so one caller's excess never throttles another. The
limit is written in the `limits` notation ("100/second", "5/minute"); counting is a plain
dict of [window end, hits] per identity — the same fixed-window semantics as
limits.FixedWindowRateLimiter over MemoryStorage (the window starts at an identity's first
hit; every hit counts, refused ones too), at a fraction of the cost per request.
"""

from __future__ import annotations

import math
import time

from limits import parse

DEFAULT_LIMIT = "10000/second"  # per user: generous
DEFAULT_ANON_LIMIT = "200/second"  # per client address, before any token check
DEFAULT_LOGIN_LIMIT = "60/minute"  # login attempts per client address
DEFAULT_LOGIN_EMAIL_LIMIT = "10/minute"  # login attempts per email
_DISABLED = frozenset({"", "0", "off", "none", "unlimited"})
# Past this many identities, windows that have ended are swept out.
_SWEEP_AT = 10_000


class RateLimiter:
    """`check(identity)` returns None when allowed, else the headers of a 429."""

    def __init__(self, spec: str = DEFAULT_LIMIT) -> None:
        self.spec = spec
        self.enabled = spec.strip().lower() not in _DISABLED
        item = parse(spec) if self.enabled else None
        self._amount: int = int(item.amount) if item is not None else 0
        self._window_s: float = float(item.get_expiry()) if item is not None else 0.0
        # identity -> [window end (time.time()), hits in the window]
        self._windows: dict[str, list[float]] = {}
        self._sweep_at = _SWEEP_AT

    def check(self, identity: str) -> list[tuple[bytes, bytes]] | None:
        if not self.enabled:
            return None
        now = time.time()
        windows = self._windows
        w = windows.get(identity)
        if w is None or w[0] <= now:
            if w is None and len(windows) >= self._sweep_at:
                self._sweep(now)
            windows[identity] = w = [now + self._window_s, 1.0]
        else:
            w[1] += 1.0
        hits = int(w[1])
        if hits <= self._amount:
            return None
        reset_in = max(1, math.ceil(w[0] - now))
        return [
            (b"retry-after", str(reset_in).encode()),
            (b"ratelimit-limit", str(self._amount).encode()),
            (b"ratelimit-remaining", str(max(0, self._amount - hits)).encode()),
            (b"ratelimit-reset", str(reset_in).encode()),
        ]

    def _sweep(self, now: float) -> None:
        windows = self._windows
        for key in [k for k, w in windows.items() if w[0] <= now]:
            del windows[key]
        # Still full of live windows: sweep again only once it has doubled.
        self._sweep_at = max(_SWEEP_AT, 2 * len(windows))
