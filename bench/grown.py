"""Cost as the data grows: the same figures on an empty shop and on a grown one, same run.

The grown shop is a copy of the kept fill (bench.fill): 1,000,000 orders of 100,000
other users with their sagas, history and notifications, 1,000,000 inbox rows and
1,000,000 events in the stream (`--smoke`: a scaled-down fill). Both shops are started
the same way as the load scenarios' shop (bench.shop) and run side by side; each gets
the same bench user with the same five orders, and each figure is measured on one right
after the other: GET /api/orders (16 connections), GET /api/dashboard (64, as the
dashboard scenario), then POST /api/orders (16, as the order scenario), so the bench
user's own orders are the same number on both sides when they are listed. Each figure
is measured twice on each side (`--smoke`: once), and the best of each is the figure;
the CPU time per request of every server process is reported beside it.
Cold start to all healthy (as bench.coldstart) on a fresh data dir and on the fresh copy
of the grown one (each start on data no process has opened yet; another round would
cost another copy of several GB). Right after a fresh fill the cold starts first wait
until its events are older than the stream's duplicate window (`settle_wait_s`).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import shop as shop_mod
from bench.coldstart import cold_start
from bench.fill import KEPT_ROOT, MANIFEST, Filled, checkout, clone
from bench.fill_plan import FillSizes
from bench.load import http_load_cpu
from bench.raw.http import ORDER_BODY
from bench.stats import Measured
from services.common.settings import DUPLICATE_WINDOW_S

__all__ = ["GROWN_GOALS", "grown"]

Say = Callable[[str], None]
# Each figure is measured this many times on each side; the best of each is the figure.
ROUNDS = 2

# figure -> (what it is, the goal's kind, its bound): a throughput kept to at least this
# share of the empty system's, a p99 to at most this factor of it, a time under a bound.
GROWN_GOALS: dict[str, tuple[str, str, float]] = {
    "orders_per_s": ("orders/s (POST /api/orders, 16 conns)", "min_ratio", 0.90),
    "list_p99_ms": ("GET /api/orders p99 ms (16 conns)", "max_ratio", 1.20),
    "dashboard_p99_ms": ("GET /api/dashboard p99 ms (64 conns)", "max_ratio", 1.20),
    "cold_start_s": ("cold start s (to all healthy)", "max_value", 3.0),
}


class _Side:
    """One shop (empty or grown) started the way the load scenarios' is, with the bench
    user and its five orders."""

    def __init__(self, label: str, data_dir: Path) -> None:
        self.label = label
        t0 = time.perf_counter()
        self.target = shop_mod.start_shop(data_dir)
        self.started_s = time.perf_counter() - t0
        self.measured: dict[str, list[Measured]] = {}

    def prepare(self) -> None:
        shop_mod.prepare(self.target)

    def measure(self, name: str, seconds: float, warmup_s: float, notes: list[str],
                say: Say) -> None:
        t = self.target
        try:
            shop_mod.wait_ready(t, before=f"grown {self.label} {name}")
        except RuntimeError as e:
            notes.append(f"grown {self.label}: before {name}: {e}")
        base, auth = t.base_url, t.auth
        if name == "list":
            m = http_load_cpu(t.pids, f"{base}/api/orders", headers=auth, connections=16,
                              seconds=seconds, warmup_s=warmup_s)
        elif name == "dashboard":
            m = http_load_cpu(t.pids, f"{base}/api/dashboard", headers=auth, connections=64,
                              ok_body=t.dashboard_ok, seconds=seconds, warmup_s=warmup_s)
        else:
            m = http_load_cpu(t.pids, f"{base}/api/orders", method="POST", body=ORDER_BODY,
                              headers=auth, connections=16, ok_status=201, seconds=seconds,
                              warmup_s=warmup_s)
        self.measured.setdefault(name, []).append(m)
        say(f"grown {self.label:<6} {name:<9} {m.rps:>9,.1f}/s  p50 {m.p50_ms:7.2f} ms  "
            f"p99 {m.p99_ms:7.2f} ms")

    def stop(self, notes: list[str]) -> None:
        notes.extend(f"grown {self.label}: {n}" for n in self.target.notes)
        self.target.stop()

    def to_json(self) -> dict[str, Any]:
        return {"started_s": round(self.started_s, 2),
                **{name: {"best": _best(ms), "rounds": [m.to_json() for m in ms]}
                   for name, ms in self.measured.items()}}


def _best(rounds: list[Measured]) -> dict[str, float]:
    """The best of the rounds of one figure: on a shared box others' work can slow a
    round down, never speed it up. A round with no successful answer has no latency (its
    0 ms is not a best); with none at all, every figure is 0 and no goal is met."""
    served = [m for m in rounds if m.ok > 0]
    if not served:
        return {"rps": 0.0, "p50_ms": 0.0, "p99_ms": 0.0, "cpu_ms_per_op": 0.0}
    cpu = [float(m.extra["cpu_ms_per_op_total"]) for m in served
           if isinstance(m.extra.get("cpu_ms_per_op_total"), int | float)]
    return {"rps": max(m.rps for m in served), "p50_ms": min(m.p50_ms for m in served),
            "p99_ms": min(m.p99_ms for m in served),
            "cpu_ms_per_op": min(cpu) if cpu else 0.0}


def _sides(tmp: Path, copy: Path, seconds: float, warmup_s: float, notes: list[str],
           say: Say, rounds: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Both shops running at once, each figure measured `rounds` times on each, empty and
    grown in turn (empty first, then grown first, ...): others' work on a shared box then
    skews both alike. The order load goes last, so the bench user has its five orders on
    both sides when they are listed."""
    sides: list[_Side] = []
    try:
        sides.append(_Side("empty", tmp / "grown-empty"))
        sides.append(_Side("filled", copy))
        for side in sides:
            side.prepare()
        time.sleep(min(1.0, 3 * seconds))  # let the set-up's events settle
        for name in ("list", "dashboard", "order"):
            for r in range(rounds):
                for side in (sides if r % 2 == 0 else sides[::-1]):
                    side.measure(name, seconds, warmup_s, notes, say)
    finally:
        for side in sides:
            side.stop(notes)
    return sides[0].to_json(), sides[1].to_json()


def _cold_starts(tmp: Path, copy: Path, say: Say, rounds: int
                 ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Cold starts, empty and grown in turn, `rounds` of each, each on data no process
    has opened yet (a fresh dir; a fresh copy of the fill, the last one being `copy`, which
    the load then uses). The best of each is the figure: on a shared box one start can
    be slowed by others' work, never sped up."""
    empty: list[float] = []
    filled: list[float] = []
    for i in range(rounds):
        empty.append(cold_start(tmp / f"grown-cold-empty-{i}")["seconds"])
        target = copy if i == rounds - 1 else tmp / f"grown-cold-filled-{i}"
        if target != copy:
            clone(copy, target)  # the run's copy, not opened yet: the kept one is not read
        filled.append(cold_start(target)["seconds"])
        if target != copy:
            shutil.rmtree(target, ignore_errors=True)
    say(f"grown: cold start {', '.join(f'{s:.2f}' for s in empty)} s empty, "
        f"{', '.join(f'{s:.2f}' for s in filled)} s filled")
    return ({"best_s": min(empty), "samples_s": [round(s, 3) for s in empty]},
            {"best_s": min(filled), "samples_s": [round(s, 3) for s in filled]})


def settle_wait_s(filled: Filled, now: float, window_s: float = DUPLICATE_WINDOW_S) -> float:
    """Seconds to wait before a cold start on `filled` measures the grown system and not
    the fill. nats-server restores a stream slowly while its messages are younger than
    the stream's duplicate window (measured on the 1,000,000-event fill: 1.6 s one minute
    after the fill, 0.14 s after 116 s, 2 ms past 120 s). A running shop has only its
    last two minutes of events in that window; a fresh fill has every event in it."""
    published = filled.manifest.get("stream", {}).get("published_until")
    if not isinstance(published, (int, float)):  # a fill kept before the field existed
        try:
            published = (filled.dir / MANIFEST).stat().st_mtime
        except OSError:
            return 0.0
    # A second past the window: the youngest event is then out of it on any clock tick.
    return max(0.0, float(published) + window_s + 1.0 - now)


def _row(name: str, empty: float, filled: float,
         cpu: tuple[float, float] | None = None) -> dict[str, Any]:
    """One figure against its goal; `cpu`: CPU ms per request of every server process,
    empty and grown (a figure that holds up better than rps or p99 on a shared box)."""
    what, kind, bound = GROWN_GOALS[name]
    ratio = filled / empty if empty > 0 else 0.0
    if kind == "min_ratio":
        met, goal = empty > 0 and filled > 0 and ratio >= bound, f">= {bound:.2f}x empty"
    elif kind == "max_ratio":
        met, goal = empty > 0 and 0 < ratio <= bound, f"<= {bound:.2f}x empty"
    else:
        met, goal = 0 < filled < bound, f"< {bound:g} s"
    out = {"figure": name, "what": what, "empty": round(empty, 3),
           "filled": round(filled, 3), "ratio": round(ratio, 3), "goal": goal, "met": met}
    if cpu is not None:
        out["cpu_ms_per_op"] = {"empty": round(cpu[0], 3), "filled": round(cpu[1], 3),
                                "ratio": round(cpu[1] / cpu[0], 3) if cpu[0] > 0 else 0.0}
    return out


def grown(tmp: Path, sizes: FillSizes, *, seconds: float, warmup_s: float,
          say: Say, kept_root: Path = KEPT_ROOT,
          cold_rounds: int = 1, rounds: int = ROUNDS,
          settle: bool = True) -> dict[str, Any]:
    """The scenario's figures, ratios and goals (for latest.json's `grown`)."""
    t_all = time.perf_counter()
    copy = tmp / "grown-filled"
    filled, clone_s = checkout(sizes, copy, kept_root, say=say)
    say(f"grown: copied the filled data ({filled.manifest.get('bytes', 0) / 1e9:.2f} GB) "
        f"in {clone_s:.1f} s")
    notes: list[str] = []
    # The smoke's fill is small: a start restores its few events at once.
    wait = settle_wait_s(filled, time.time()) if settle else 0.0
    if wait > 0:
        say(f"grown: waiting {wait:.0f} s, until the fill's events are older than the "
            f"stream's {DUPLICATE_WINDOW_S:.0f} s duplicate window, as a running shop's are")
        notes.append(f"waited {wait:.0f} s after the fresh fill before the cold starts "
                     "(the stream's duplicate window)")
        time.sleep(wait)
    cold_empty, cold_filled = _cold_starts(tmp, copy, say,
                                           max(1, cold_rounds))
    empty, full = _sides(tmp, copy, seconds, warmup_s, notes, say, max(1, rounds))
    e, f = ({n: side[n]["best"] for n in ("order", "list", "dashboard")}
            for side in (empty, full))
    rows = [
        _row("orders_per_s", e["order"]["rps"], f["order"]["rps"],
             (e["order"]["cpu_ms_per_op"], f["order"]["cpu_ms_per_op"])),
        _row("list_p99_ms", e["list"]["p99_ms"], f["list"]["p99_ms"],
             (e["list"]["cpu_ms_per_op"], f["list"]["cpu_ms_per_op"])),
        _row("dashboard_p99_ms", e["dashboard"]["p99_ms"], f["dashboard"]["p99_ms"],
             (e["dashboard"]["cpu_ms_per_op"], f["dashboard"]["cpu_ms_per_op"])),
        _row("cold_start_s", cold_empty["best_s"], cold_filled["best_s"]),
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
