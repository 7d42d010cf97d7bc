"""Where one order's time goes: `python -m bench.timeline [--seconds 6] [--rate 0]`.

Drives the order saga at one connection (bench.saga_load, notification and shipping
included) with every trace sampled into a local receiver, then lines each order's spans
up against its CreateOrder server span. For each step (a write, a call, the server side
of a call, an event made) it gives the median start offset and duration over the traced
orders; for each call the transit: the client span's time not spent in the server span
it caused (both directions of the hop, the interceptors before the server span and the
wait for a core on a busy box). `make bench PROFILE=1` runs it after the flame graphs.
Figures, never pass/fail: every trace sampled costs a little of what it measures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bench.saga_load import run_load
from bench.shop import tracing_env
from ops.otlp import OtlpReceiver, Received

__all__ = ["ROOT", "format_timeline", "measure_timeline", "order_timeline"]

ROOT = ("shop-order", "shop.order.v1.OrderService/CreateOrder")
_SERVER, _CLIENT = 2, 3  # trace_pb2.Span.SpanKind values
_KINDS = {1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}
# A step seen in fewer of the traced orders than this is left out (a retry, a cache miss).
_MIN_SHARE = 0.5


@dataclass
class _Step:
    starts: list[float]
    durations: list[float]


def _ms(nanos: int) -> float:
    return nanos / 1e6


def _median(values: Sequence[float]) -> float:
    return round(statistics.median(values), 3)


def order_timeline(received: Sequence[Received], root: tuple[str, str] = ROOT
                   ) -> dict[str, Any]:
    """The median timeline of the traces rooted in a `root` (service, name) server span:
    steps in order of their median start (ms from the root's start) and each call's
    transit. Spans starting after the root ended (the events that follow) are left out."""
    by_trace: dict[bytes, list[Received]] = defaultdict(list)
    for r in received:
        by_trace[r.span.trace_id].append(r)
    steps: dict[tuple[str, str, int, int], _Step] = {}
    transit: dict[str, list[tuple[float, float]]] = defaultdict(list)
    roots: list[float] = []
    for spans in by_trace.values():
        tops = [r.span for r in spans if (r.service, r.span.name) == root
                and r.span.kind == _SERVER]
        if len(tops) != 1:
            continue
        t0, t1 = tops[0].start_time_unix_nano, tops[0].end_time_unix_nano
        roots.append(_ms(t1 - t0))
        seen: dict[tuple[str, str, int], int] = defaultdict(int)
        servers = {r.span.parent_span_id: r.span for r in spans if r.span.kind == _SERVER}
        for r in sorted(spans, key=lambda r: r.span.start_time_unix_nano):
            s = r.span
            if s.start_time_unix_nano > t1:
                continue
            key = (r.service, s.name, s.kind)
            nth = seen[key]
            seen[key] += 1
            step = steps.setdefault((*key, nth), _Step([], []))
            step.starts.append(_ms(s.start_time_unix_nano - t0))
            step.durations.append(_ms(s.end_time_unix_nano - s.start_time_unix_nano))
            server = servers.get(s.span_id) if s.kind == _CLIENT else None
            if server is not None:
                transit[f"{r.service} -> {s.name}"].append(
                    (_ms(s.end_time_unix_nano - s.start_time_unix_nano),
                     _ms(server.end_time_unix_nano - server.start_time_unix_nano)))
    floor = _MIN_SHARE * len(roots)
    kept = sorted(((k, st) for k, st in steps.items() if len(st.starts) >= floor),
                  key=lambda kv: _median(kv[1].starts))
    rows: list[dict[str, Any]] = [
        {"service": svc, "name": name, "kind": _KINDS.get(kind, str(kind)), "nth": nth,
         "start_ms": _median(st.starts), "duration_ms": _median(st.durations),
         "orders": len(st.starts)}
        for (svc, name, kind, nth), st in kept]
    calls = [{"call": call, "client_ms": _median([c for c, _ in pairs]),
              "server_ms": _median([s for _, s in pairs]),
              "transit_ms": _median([c - s for c, s in pairs]), "orders": len(pairs)}
             for call, pairs in sorted(transit.items()) if len(pairs) >= floor]
    return {"orders": len(roots), "root_p50_ms": _median(roots) if roots else 0.0,
            "steps": rows, "calls": calls}


def measure_timeline(seconds: float = 6.0, rate: float = 0.0) -> dict[str, Any]:
    """A system of its own, the saga at one connection (open loop at `rate`/s when > 0),
    every trace sampled; the timeline, and the load's own figures under `load`."""
    receiver = OtlpReceiver().start()
    try:
        # The bench's export, with every trace sampled instead of its ratio.
        env = {**tracing_env(receiver.endpoint), "OTEL_TRACES_SAMPLER": "parentbased_always_on"}
        load = run_load([1], seconds=seconds, warmup_s=1.0, rate=rate, all_services=True,
                        env=env)[0]
        time.sleep(0.5)  # the last exports, sent as the processes stopped
        doc = order_timeline(receiver.snapshot())
    finally:
        receiver.stop()
    doc["load"] = load
    doc["sampled"] = "every trace (parentbased_always_on)"
    return doc


def format_timeline(doc: dict[str, Any]) -> list[str]:
    """The timeline as report lines."""
    lines = [f"one order's time at 1 connection ({doc['orders']} orders traced, every "
             f"trace sampled; CreateOrder p50 {doc['root_p50_ms']:.2f} ms in the order "
             f"service):"]
    for s in doc["steps"]:
        nth = f" #{s['nth'] + 1}" if s["nth"] else ""
        lines.append(f"  {s['start_ms']:7.2f} +{s['duration_ms']:6.2f} ms  "
                     f"{s['service']:<18} {s['kind']:<8} {s['name']}{nth}")
    client_p50 = doc.get("load", {}).get("p50_ms")
    if isinstance(client_p50, int | float):
        lines.append(f"  the caller saw p50 {client_p50:.2f} ms: "
                     f"{client_p50 - doc['root_p50_ms']:.2f} ms outside the order service "
                     f"(its own hop)")
    for c in doc["calls"]:
        lines.append(f"  transit {c['call']}: {c['transit_ms']:.2f} ms of "
                     f"{c['client_ms']:.2f} (server span {c['server_ms']:.2f})")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.timeline")
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--rate", type=float, default=0.0,
                    help="orders per second, open loop (0: one after the other)")
    ap.add_argument("--json", action="store_true", help="print the document as JSON")
    args = ap.parse_args(argv)
    doc = measure_timeline(args.seconds, args.rate)
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print("\n".join(format_timeline(doc)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
