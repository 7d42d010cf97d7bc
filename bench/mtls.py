"""What mutual TLS costs: gateway GET, the order saga and the dashboard with SHOP_MTLS on
and off, in the same run (`python -m bench.mtls [--seconds S]`).

Each mode gets a whole system of its own (NATS, eight services, the gateway) on free
ports; the figures are successful requests per second and the services' CPU per
request, printed as one JSON line per mode and a comparison at the end. A figure, never
a pass/fail."""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import shop as shop_mod
from bench.load import http_load_cpu
from bench.raw.http import ORDER_BODY


def _mode(mode: str, root: Path, seconds: float, warmup_s: float) -> dict[str, Any]:
    os.environ["SHOP_MTLS"] = mode  # the system's processes and the bench's own calls
    target = shop_mod.start_shop(root)
    try:
        shop_mod.prepare(target)
        time.sleep(1.0)  # the set-up's events settle
        base, auth = target.base_url, target.auth
        out: dict[str, Any] = {"mtls": mode}
        for name, url, kw in (
            ("product_get", f"{base}/api/products/{shop_mod.PRODUCT_ID}",
             {"connections": 64}),
            ("order", f"{base}/api/orders",
             {"method": "POST", "body": ORDER_BODY, "connections": 16, "ok_status": 201}),
            ("dashboard", f"{base}/api/dashboard",
             {"connections": 64, "ok_body": target.dashboard_ok}),
        ):
            shop_mod.wait_ready(target, before=name)
            m = http_load_cpu(target.pids, url, headers=auth, seconds=seconds,
                              warmup_s=warmup_s, **kw)
            out[name] = {"rps": round(m.rps, 1), "p50_ms": m.p50_ms, "p99_ms": m.p99_ms,
                         "errors": m.errors,
                         "cpu_ms_per_op": m.extra.get("cpu_ms_per_op_total")}
        return out
    finally:
        target.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.mtls")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    # Alternating rounds: on a shared machine one round of each says little.
    parser.add_argument("--modes", default="off,on,on,off")
    args = parser.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="shop-bench-mtls-") as tmp:
        for n, mode in enumerate(modes):
            runs.append(_mode(mode, Path(tmp) / str(n), args.seconds, args.warmup))
            print(json.dumps(runs[-1]), flush=True)
    print("\nscenario      off rps   on rps   on/off   cpu ms/op off -> on  (mean of rounds)")
    for name in ("product_get", "order", "dashboard"):
        mean = {}
        for mode in ("off", "on"):
            rounds = [r[name] for r in runs if r["mtls"] == mode]
            mean[mode] = ({k: round(sum(r[k] or 0 for r in rounds) / len(rounds), 3)
                           for k in ("rps", "cpu_ms_per_op")} if rounds else
                          {"rps": 0.0, "cpu_ms_per_op": 0.0})
        off, on = mean["off"], mean["on"]
        ratio = on["rps"] / off["rps"] if off["rps"] else 0.0
        print(f"{name:<12} {off['rps']:>8} {on['rps']:>8}   {ratio:>5.0%}   "
              f"{off['cpu_ms_per_op']} -> {on['cpu_ms_per_op']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
