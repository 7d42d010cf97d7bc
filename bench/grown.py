"""Cost as the data grows: the same figures on an empty shop and on a grown one, same run.

The grown shop is a copy of the kept fill (bench.fill): 1,000,000 orders of 100,000
other users with their sagas and history, 1,000,000 inbox rows and 1,000,000 events in
the stream (`--smoke`: a scaled-down fill). Each side is started the same way as the
load scenarios' shop (bench.shop), gets the same bench user with the same five orders,
and is measured in the same order: GET /api/orders (16 connections), GET /api/dashboard
(64, as the dashboard scenario), then POST /api/orders (16, as the order scenario), so
the bench user's own orders are the same number on both sides when they are listed.
Cold start to all healthy (as bench.coldstart) on a fresh data dir and on the grown
copy, back to back.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import shop as shop_mod
from bench.coldstart import cold_start
from bench.fill import KEPT_ROOT, clone, ensure_filled
from bench.fill_plan import FillSizes
from bench.load import http_load_cpu
from bench.raw.http import ORDER_BODY
from bench.stats import Measured

__all__ = ["GROWN_GOALS", "grown"]

Say = Callable[[str], None]

# figure -> (what it is, the goal's kind, its bound): a throughput kept to at least this
# share of the empty system's, a p99 to at most this factor of it, a time under a bound.
GROWN_GOALS: dict[str, tuple[str, str, float]] = {
    "orders_per_s": ("orders/s (POST /api/orders, 16 conns)", "min_ratio", 0.90),
    "list_p99_ms": ("GET /api/orders p99 ms (16 conns)", "max_ratio", 1.20),
    "dashboard_p99_ms": ("GET /api/dashboard p99 ms (64 conns)", "max_ratio", 1.20),
    "cold_start_s": ("cold start s (to all healthy)", "max_value", 3.0),
}


def _side(data_dir: Path, seconds: float, warmup_s: float, notes: list[str],
          say: Say, label: str) -> dict[str, Any]:
    t0 = time.perf_counter()
    target = shop_mod.start_shop(data_dir)
    started_s = time.perf_counter() - t0
    try:
        shop_mod.prepare(target)
        time.sleep(min(1.0, 3 * seconds))  # let the set-up's events settle
        base, auth, pids = target.base_url, target.auth, target.pids
        measured: dict[str, Measured] = {}

        def step(name: str, fn: Callable[[], Measured]) -> None:
            try:
                shop_mod.wait_ready(target, before=f"grown {label} {name}")
            except RuntimeError as e:
                notes.append(f"grown {label}: before {name}: {e}")
            measured[name] = fn()
            m = measured[name]
            say(f"grown {label:<6} {name:<9} {m.rps:>9,.1f}/s  p50 {m.p50_ms:7.2f} ms  "
                f"p99 {m.p99_ms:7.2f} ms")

        step("list", lambda: http_load_cpu(pids, f"{base}/api/orders", headers=auth,
                                           connections=16, seconds=seconds,
                                           warmup_s=warmup_s))
        step("dashboard", lambda: http_load_cpu(pids, f"{base}/api/dashboard", headers=auth,
                                                connections=64, ok_body=target.dashboard_ok,
                                                seconds=seconds, warmup_s=warmup_s))
        step("order", lambda: http_load_cpu(pids, f"{base}/api/orders", method="POST",
                                            body=ORDER_BODY, headers=auth, connections=16,
                                            ok_status=201, seconds=seconds,
                                            warmup_s=warmup_s))
    finally:
        notes.extend(f"grown {label}: {n}" for n in target.notes)
        target.stop()
    return {"started_s": round(started_s, 2),
            **{name: m.to_json() for name, m in measured.items()}}


def _row(name: str, empty: float, filled: float) -> dict[str, Any]:
    what, kind, bound = GROWN_GOALS[name]
    ratio = filled / empty if empty > 0 else 0.0
    if kind == "min_ratio":
        met, goal = empty > 0 and filled > 0 and ratio >= bound, f">= {bound:.2f}x empty"
    elif kind == "max_ratio":
        met, goal = empty > 0 and 0 < ratio <= bound, f"<= {bound:.2f}x empty"
    else:
        met, goal = 0 < filled < bound, f"< {bound:g} s"
    return {"figure": name, "what": what, "empty": round(empty, 3),
            "filled": round(filled, 3), "ratio": round(ratio, 3), "goal": goal, "met": met}


def grown(tmp: Path, sizes: FillSizes, *, seconds: float, warmup_s: float,
          say: Say, kept_root: Path = KEPT_ROOT) -> dict[str, Any]:
    """The scenario's figures, ratios and goals (for latest.json's `grown`)."""
    t_all = time.perf_counter()
    filled = ensure_filled(sizes, kept_root, say=say)
    copy = tmp / "grown-filled"
    clone_s = clone(filled.dir, copy)
    say(f"grown: copied the filled data ({filled.manifest.get('bytes', 0) / 1e9:.2f} GB) "
        f"in {clone_s:.1f} s")
    notes: list[str] = []
    cold_empty = cold_start(tmp / "grown-cold-empty")
    cold_filled = cold_start(copy)
    say(f"grown: cold start {cold_empty['seconds']:.2f} s empty, "
        f"{cold_filled['seconds']:.2f} s filled")
    empty = _side(tmp / "grown-empty", seconds, warmup_s, notes, say, "empty")
    full = _side(copy, seconds, warmup_s, notes, say, "filled")
    rows = [
        _row("orders_per_s", empty["order"]["rps"], full["order"]["rps"]),
        _row("list_p99_ms", empty["list"]["p99_ms"], full["list"]["p99_ms"]),
        _row("dashboard_p99_ms", empty["dashboard"]["p99_ms"], full["dashboard"]["p99_ms"]),
        _row("cold_start_s", cold_empty["seconds"], cold_filled["seconds"]),
    ]
    return {
        "sizes": sizes.to_json(),
        "fill": {"dir": str(filled.dir), "reused": filled.reused,
                 "fill_s": filled.manifest.get("fill_s"),
                 "timings": filled.manifest.get("timings"),
                 "counts": filled.manifest.get("counts"),
                 "bytes": filled.manifest.get("bytes"),
                 "filled_at": filled.manifest.get("filled_at")},
        "clone_s": round(clone_s, 2),
        "cold_start": {"empty": cold_empty, "filled": cold_filled},
        "empty": empty, "filled": full, "rows": rows, "notes": notes,
        "met": all(r["met"] for r in rows),
        "wall_s": round(time.perf_counter() - t_all, 1),
    }
