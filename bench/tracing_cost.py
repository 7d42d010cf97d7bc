"""What tracing costs the order saga: `python -m bench.tracing_cost [--seconds 5] [--conc 8]`.

Runs the saga load (bench.saga_load, with notification and shipping, so the event side is
traced too) three times in one go: tracing off (`OTEL_SDK_DISABLED=true`), every trace
sampled and exported over OTLP/HTTP to a local receiver, and a 10 % parent-based ratio.
Prints orders/s, p50/p99, CPU per order and spans received for each, and the throughput
and CPU-per-order cost against off.
Figures, not a pass/fail test: the machine's load moves them.
"""

from __future__ import annotations

import argparse
import json

from bench.saga_load import run_load
from ops.otlp import OtlpReceiver


def _modes(endpoint: str) -> dict[str, dict[str, str]]:
    export = {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
              "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}
    return {
        "off": {"OTEL_SDK_DISABLED": "true"},
        "sampled_100": {**export, "OTEL_TRACES_SAMPLER": "parentbased_always_on"},
        "sampled_10": {**export, "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                       "OTEL_TRACES_SAMPLER_ARG": "0.1"},
    }


def _num(res: dict[str, object], key: str) -> float:
    value = res.get(key, 0)
    return float(value) if isinstance(value, int | float) else 0.0


def _rate(res: dict[str, object]) -> float:
    return _num(res, "orders_per_s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.tracing_cost")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--conc", type=int, default=8)
    args = ap.parse_args(argv)
    receiver = OtlpReceiver().start()
    rows: dict[str, dict[str, object]] = {}
    try:
        for mode, env in _modes(receiver.endpoint).items():
            before = len(receiver.snapshot())
            res = run_load([args.conc], seconds=args.seconds, warmup_s=args.warmup,
                           all_services=True, env=env)[0]
            res["spans_received"] = len(receiver.snapshot()) - before
            rows[mode] = res
    finally:
        receiver.stop()
    base = _rate(rows["off"])
    base_cpu = _num(rows["off"], "cpu_ms_per_order_total")
    for mode, res in rows.items():
        rate = _rate(res)
        res["throughput_cost_pct"] = round(100 * (1 - rate / base), 1) if base else None
        # CPU per order: steadier than throughput on a machine shared with other work.
        cpu = _num(res, "cpu_ms_per_order_total")
        res["cpu_cost_pct"] = round(100 * (cpu / base_cpu - 1), 1) if base_cpu else None
        print(json.dumps({"mode": mode, **res}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
