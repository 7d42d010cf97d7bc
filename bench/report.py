"""Goals, the terminal table, latest.json and the history with deltas."""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.raw.tiny import SAGA_COMMITS_PER_ORDER
from bench.stats import Measured
from bench.timeline import format_timeline

__all__ = ["GOALS", "PG_SCENARIOS", "SCENARIOS", "Goal", "append_history", "build_doc",
           "durable_line", "machine_info", "previous_run", "print_report"]

SCENARIOS = ("product_get", "dashboard", "order", "outbox", "consumer")
# With DB=postgres: the order saga and the event path on PostgreSQL, each compared with
# the same scenario on SQLite in the same run.
PG_SCENARIOS = ("order_pg", "outbox_pg", "consumer_pg")


@dataclass(frozen=True)
class Goal:
    raw_name: str  # the raw baseline this scenario is compared with
    min_ratio: float
    max_p99_factor: float | None = None  # p99 at most this many times the raw p99
    max_cpu_ms: float | None = None  # CPU of every server process per request, at most

    def text(self) -> str:
        out = f">= {self.min_ratio:.2f} x {self.raw_name}"
        if self.max_p99_factor is not None:
            out += f", p99 <= {self.max_p99_factor:g}x raw"
        if self.max_cpu_ms is not None:
            out += f", cpu <= {self.max_cpu_ms:g} ms"
        return out


GOALS: dict[str, Goal] = {
    "product_get": Goal("raw hop", 0.70, 1.2),
    "dashboard": Goal("raw fan-out", 0.75),
    "order": Goal("raw saga", 0.50, 2.0, max_cpu_ms=3.5),
    "outbox": Goal("raw publish", 0.50),
    "consumer": Goal("raw pull+ack", 0.25),
    "order_pg": Goal("order on SQLite", 0.80),
    "outbox_pg": Goal("outbox on SQLite", 0.80),
    "consumer_pg": Goal("consumer on SQLite", 0.80),
}
# What each raw baseline leaves out that shop pays for: a ratio is only fair read with it.
RAW_LEAVES_OUT: dict[str, str] = {
    "product_get": "JWT check, rate limit, admission and body limits, request ids, tracing, "
                   "metrics, mTLS between gateway and product, discovery and breakers",
    "dashboard": "JWT, per-part deadlines and degraded answers, mTLS, tracing, metrics; its "
                 "three parts read real stores (orders, notifications, cart)",
    "order": "events (outbox rows, relay, NATS fsyncs), JWT, the user/cart/pricing reads, "
             "the stock commit (inventory's consumer of order.confirmed, with its inbox "
             "row), saga history and lease, idempotency keys, mTLS, "
             "tracing and metrics",
    "outbox": "the transaction writing each row, ordering per aggregate, leases, "
              "deduplication headers",
    "consumer": "the inbox row per event in the handler's transaction, the handler's own "
                "write, correlation and trace context, dead-lettering",
    "order_pg": "nothing: the same saga on SQLite, so the ratio is the backend's cost",
    "outbox_pg": "nothing: the same relay on SQLite, so the ratio is the backend's cost",
    "consumer_pg": "nothing: the same consumer on SQLite, so the ratio is the backend's cost",
}
# At the start of a run, a 1-minute load average above this share of the CPUs means
# other work shares the box: the run says so and is not a figure of record.
QUIET_LOAD_SHARE = 0.5
COLD_START_GOAL_S = 3.0
IDLE_RSS_GOAL_MB = 700.0


def _scenario(name: str, shop: Measured, raw: Measured, goal: Goal) -> dict[str, Any]:
    ratio = shop.rps / raw.rps if raw.rps > 0 else 0.0
    met = ratio >= goal.min_ratio
    p99_factor = shop.p99_ms / raw.p99_ms if raw.p99_ms > 0 else 0.0
    if goal.max_p99_factor is not None:
        met = met and 0 < p99_factor <= goal.max_p99_factor
    cpu = shop.extra.get("cpu_ms_per_op_total")
    if goal.max_cpu_ms is not None:
        met = met and isinstance(cpu, int | float) and 0 < cpu <= goal.max_cpu_ms
    return {
        "rps": round(shop.rps, 1), "p50_ms": round(shop.p50_ms, 3),
        "p99_ms": round(shop.p99_ms, 3), "raw_rps": round(raw.rps, 1),
        "ratio": round(ratio, 3), "raw_p50_ms": round(raw.p50_ms, 3),
        "raw_p99_ms": round(raw.p99_ms, 3), "p99_vs_raw": round(p99_factor, 2),
        "goal": goal.text(), "met": met and shop.ok > 0,
        "raw_leaves_out": RAW_LEAVES_OUT.get(name, ""),
        "ok": shop.ok, "errors": shop.errors, "raw_errors": raw.errors,
        "tool": shop.tool, "latency_of": shop.latency_of, "raw_latency_of": raw.latency_of,
        "cpu_ms_per_op": shop.extra.get("cpu_ms_per_op_total"),
        "raw_cpu_ms_per_op": raw.extra.get("cpu_ms_per_op_total"),
        **({"durable_per_op": shop.extra["durable_per_op"]}
           if "durable_per_op" in shop.extra else {}),
        "detail": {"shop": shop.extra, "raw": raw.extra},
    }


def machine_info(loader: str) -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_mb = 0
    try:
        first = Path("/proc/meminfo").read_text().splitlines()[0]
        mem_mb = int(first.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    import grpc
    return {
        "cpus": os.cpu_count() or 0, "cpu_model": cpu, "mem_mb": mem_mb,
        "python": platform.python_version(), "platform": platform.platform(),
        "grpcio": grpc.__version__, "http_load_tool": loader,
        "loadavg_start": list(os.getloadavg()),
    }


def build_doc(pairs: dict[str, tuple[Measured, Measured]], cold: dict[str, float],
              rss: dict[str, Any], machine: dict[str, Any], *, smoke: bool, seconds: float,
              failures: dict[str, str], notes: list[str], wall_s: float,
              extra: dict[str, Any] | None = None) -> dict[str, Any]:
    machine = {**machine, "loadavg_end": list(os.getloadavg())}
    cpus = machine.get("cpus") or 1
    machine["quiet"] = machine["loadavg_start"][0] <= QUIET_LOAD_SHARE * cpus
    return {
        **(extra or {}),
        "scenarios": {name: _scenario(name, *pairs[name], GOALS[name])
                      for name in (*SCENARIOS, *PG_SCENARIOS) if name in pairs},
        "cold_start_s": round(cold.get("seconds", 0.0), 3),
        "cold_start": {**cold, "goal_s": COLD_START_GOAL_S,
                       "met": 0 < cold.get("seconds", 0.0) < COLD_START_GOAL_S},
        "rss_mb": rss,
        "machine": machine,
        "run": {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "smoke": smoke,
                "seconds": seconds, "wall_s": round(wall_s, 1), "failures": failures,
                "notes": notes},
    }


def _fmt(x: float, digits: int = 1) -> str:
    return f"{x:,.{digits}f}"


def print_report(doc: dict[str, Any], previous: dict[str, Any] | None) -> None:
    rows = [("scenario", "rps", "p50 ms", "p99 ms", "raw rps", "raw p99", "ratio", "cpu/op",
             "raw cpu/op", "goal", "")]
    for name, s in doc["scenarios"].items():
        rows.append((name, _fmt(s["rps"]), _fmt(s["p50_ms"], 2), _fmt(s["p99_ms"], 2),
                     _fmt(s["raw_rps"]), _fmt(s["raw_p99_ms"], 2), f"{s['ratio']:.2f}",
                     _ms(s.get("cpu_ms_per_op")), _ms(s.get("raw_cpu_ms_per_op")),
                     s["goal"], "met" if s["met"] else "MISSED"))
    cold = doc["cold_start"]
    blank = ("",) * 8
    rows.append(("cold_start", *blank, f"< {cold['goal_s']:g} s",
                 f"{cold['seconds']:.2f} s " + ("met" if cold["met"] else "MISSED")))
    rss = doc["rss_mb"]
    if rss.get("idle_total") is not None:
        rows.append(("rss idle", *blank, f"< {rss['goal_mb']:g} MB",
                     f"{rss['idle_total']:.0f} MB " + ("met" if rss["met"] else "MISSED")))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    print()
    for i, row in enumerate(rows):
        cells = [c.rjust(w) if 0 < j < 9 else c.ljust(w)
                 for j, (c, w) in enumerate(zip(row, widths, strict=True))]
        print("  " + "  ".join(cells).rstrip())
        if i == 0:
            print("  " + "  ".join("-" * w for w in widths))
    m = doc["machine"]
    print(f"\n  {m['cpus']} cpus ({m['cpu_model']}), python {m['python']}, grpcio {m['grpcio']}; "
          f"HTTP load: {m['http_load_tool']}; load average {m['loadavg_start'][0]:.1f} at start, "
          f"{m['loadavg_end'][0]:.1f} at end (others' work on this box skews every figure)")
    if not m.get("quiet", True):
        print(f"  UNDER LOAD: the box was busy when the run started (load "
              f"{m['loadavg_start'][0]:.1f} on {m['cpus']} cpus): not a figure of record")
    print("  what each raw baseline leaves out:")
    for name, s in doc["scenarios"].items():
        if s.get("raw_leaves_out"):
            print(f"    {name:<12} {s['raw_leaves_out']}")
    _print_durable(doc["scenarios"].get("order"))
    _print_curve(doc.get("curve"))
    _print_grown(doc.get("grown"))
    _print_profile(doc.get("profile"))
    print("  cpu/op: CPU time of every server process (not the load tool) over the timed "
          "window per successful request; rps on a shared box swings, this holds up better")
    if rss.get("idle"):
        print(f"  rss idle (MB): {_rss_line(rss['idle'])}")
    if rss.get("load"):
        print(f"  rss peak under load (MB): {_rss_line(rss['load'])} = {rss['load_total']:.0f}")
    for note in doc["run"].get("notes", []):
        print(f"  note: {note}")
    for name, why in doc["run"]["failures"].items():
        print(f"  FAILED {name}: {why}")
    if previous is not None:
        print(f"\n  delta against the previous run ({previous.get('run', {}).get('time', '?')}):")
        for name, s in doc["scenarios"].items():
            before = previous.get("scenarios", {}).get(name)
            if before and before.get("rps"):
                print(f"    {name:<12} rps {_delta(s['rps'], before['rps'])}, "
                      f"p99 {_delta(s['p99_ms'], before['p99_ms'])}, "
                      f"ratio {s['ratio']:.2f} (was {before.get('ratio', 0):.2f})")
        if previous.get("cold_start_s"):
            print(f"    {'cold_start':<12} {_delta(doc['cold_start_s'], previous['cold_start_s'])}")
        prev_rss = previous.get("rss_mb", {}).get("idle_total")
        if prev_rss and rss.get("idle_total"):
            print(f"    {'rss idle':<12} {_delta(rss['idle_total'], prev_rss)}")
    print()


def durable_line(writes: dict[str, Any]) -> str:
    """The order scenario's durable writes per order beside the raw saga's."""
    parts = ", ".join(f"{name} {w['commits']:g}" for name, w in writes["by_process"].items()
                      if w["commits"])
    return (f"durable writes per order (each one fsync): shop {writes['db_commits']:g} "
            f"SQLite commits ({parts or 'none'}) + {writes['jetstream_publishes']:g} "
            f"JetStream publishes; raw saga {SAGA_COMMITS_PER_ORDER} SQLite commits, "
            "no events")


def _print_durable(order: dict[str, Any] | None) -> None:
    if order and order.get("durable_per_op"):
        print(f"  {durable_line(order['durable_per_op'])}")


def _print_curve(curve: dict[str, Any] | None) -> None:
    if not curve or not curve.get("rows"):
        return
    print("\n  order saga as the load grows (shop | raw):")
    print(f"    {'conns':>5}  {'orders/s':>17}  {'p50 ms':>15}  {'p99 ms':>15}  ratio  "
          "cpu/order")
    for r in curve["rows"]:
        sh, rw = r["shop"], r["raw"]
        print(f"    {r['connections']:>5}  {sh['rps']:>8,.1f} {rw['rps']:>8,.1f}  "
              f"{sh['p50_ms']:>7.2f} {rw['p50_ms']:>7.2f}  {sh['p99_ms']:>7.2f} "
              f"{rw['p99_ms']:>7.2f}  {r['ratio']:>5.2f}  {_ms(sh.get('cpu_ms_per_op'))} | "
              f"{_ms(rw.get('cpu_ms_per_op'))}")
    one = curve.get("one_connection", {})
    if one:
        print(f"    one order alone: {one['factor']:.2f}x the raw saga's p50 (goal <= "
              f"{one['goal']:g}x) " + ("met" if one["met"] else "MISSED"))
    print(f"    plot: {curve['plot']}" if curve.get("plot") else
          f"    no plot: {curve.get('plot_error', '')}")


def _print_grown(grown: dict[str, Any] | None) -> None:
    """The empty system beside the grown one (bench.grown)."""
    if not grown or not grown.get("rows"):
        return
    sz, fill = grown["sizes"], grown.get("fill", {})
    how = ("kept copy reused" if fill.get("reused")
           else f"filled now in {fill.get('fill_s', 0):.0f} s")
    print(f"\n  cost as the data grows ({sz['orders']:,} orders, {sz['users']:,} users, "
          f"{sz['inbox']:,} inbox rows, {sz['events']:,} events; {how}; copied in "
          f"{grown.get('clone_s', 0):.1f} s; {grown.get('wall_s', 0):.0f} s in all):")
    print(f"    {'figure':<38} {'empty':>9} {'filled':>9}  ratio  {'goal':<15} {'':<6}  "
          "cpu/op empty, filled")
    for r in grown["rows"]:
        cpu = r.get("cpu_ms_per_op")
        cpu_text = (f"{_ms(cpu['empty'])}, {_ms(cpu['filled'])} ({cpu['ratio']:.2f}x)"
                    if cpu else "")
        print(f"    {r['what']:<38} {r['empty']:>9,.2f} {r['filled']:>9,.2f}  "
              f"{r['ratio']:>5.2f}  {r['goal']:<15} {'met' if r['met'] else 'MISSED':<6}  "
              f"{cpu_text}".rstrip())
    print("    (each figure the best of its rounds on each side; the two shops ran side by "
          "side)")
    for note in grown.get("notes", []):
        print(f"    note: {note}")


def _print_profile(profile: dict[str, Any] | None) -> None:
    if not profile:
        return
    if profile.get("error"):
        print(f"\n  profile: {profile['error']}")
    else:
        print("\n  profile of the order scenario (self time, share of busy samples):")
    for name, p in sorted(profile.get("processes", {}).items()):
        if p.get("error"):
            print(f"    {name:<16} no profile: {p['error']}")
            continue
        tops = "; ".join(f"{t['function']} {100 * t['share_of_busy']:.0f} %" for t in p["top"])
        print(f"    {name:<16} {tops}  [{p['svg']}]")
    if profile.get("timeline"):
        print()
        for line in format_timeline(profile["timeline"]):
            print(f"  {line}")


def _ms(value: object) -> str:
    return f"{value:.2f} ms" if isinstance(value, int | float) else "-"


def _rss_line(values: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.0f}" for k, v in sorted(values.items()))


def _delta(now: float, before: float) -> str:
    if not before:
        return f"{now:,.1f}"
    return f"{now:,.1f} ({(now - before) / before * 100:+.1f} %)"


def previous_run(history: Path, *, smoke: bool) -> dict[str, Any] | None:
    """The last recorded run of the same kind (smoke runs compare with smoke runs)."""
    try:
        lines = history.read_text().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if isinstance(doc, dict) and bool(doc.get("run", {}).get("smoke")) == smoke:
            return doc
    return None


def append_history(history: Path, doc: dict[str, Any]) -> None:
    history.parent.mkdir(parents=True, exist_ok=True)
    with history.open("a") as f:
        f.write(json.dumps(doc, separators=(",", ":")) + "\n")
