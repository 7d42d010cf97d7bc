"""Cost as the load grows: orders/s and latency at 1, 4, 16 and 64 connections, shop and
the raw saga side by side at each level (the raw one first, then shop, seconds apart),
as rows for the report and a PNG plot.

The plot needs matplotlib, an optional dependency of the bench only (`make bench`
installs it from requirements-bench.lock); without it the table is still printed."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.stats import Measured

__all__ = ["LEVELS", "ONE_CONNECTION_P50_GOAL", "curve_rows", "one_connection_goal", "plot_curve"]

LEVELS = (1, 4, 16, 64)
# One order alone (1 connection) at most this many times the raw saga's latency.
ONE_CONNECTION_P50_GOAL = 2.0


def _point(m: Measured) -> dict[str, Any]:
    return {"rps": round(m.rps, 1), "p50_ms": round(m.p50_ms, 3), "p99_ms": round(m.p99_ms, 3),
            "ok": m.ok, "errors": m.errors,
            "cpu_ms_per_op": m.extra.get("cpu_ms_per_op_total"),
            "failure": m.extra.get("failure", "")}


def curve_rows(shop_at: Callable[[int], Measured], raw_at: Callable[[int], Measured],
               levels: tuple[int, ...] = LEVELS) -> list[dict[str, Any]]:
    """Each level: the raw saga's figures, shop's, and shop's ratios to them."""
    rows = []
    for conns in levels:
        raw = _point(raw_at(conns))
        shop = _point(shop_at(conns))
        rows.append({
            "connections": conns, "shop": shop, "raw": raw,
            "ratio": round(shop["rps"] / raw["rps"], 3) if raw["rps"] else 0.0,
            "p50_vs_raw": round(shop["p50_ms"] / raw["p50_ms"], 2) if raw["p50_ms"] else 0.0,
            "p99_vs_raw": round(shop["p99_ms"] / raw["p99_ms"], 2) if raw["p99_ms"] else 0.0,
        })
    return rows


def one_connection_goal(rows: list[dict[str, Any]]) -> dict[str, Any]:
    one = next((r for r in rows if r["connections"] == 1), None)
    if one is None or not one["p50_vs_raw"]:
        return {"met": False, "factor": 0.0, "goal": ONE_CONNECTION_P50_GOAL}
    return {"met": 0 < one["p50_vs_raw"] <= ONE_CONNECTION_P50_GOAL,
            "factor": one["p50_vs_raw"], "goal": ONE_CONNECTION_P50_GOAL}


def plot_curve(rows: list[dict[str, Any]], path: Path) -> str:
    """Write the plot; "" when written, else why not."""
    try:
        matplotlib: Any = importlib.import_module("matplotlib")
        matplotlib.use("Agg")  # no display
        plt: Any = importlib.import_module("matplotlib.pyplot")
    except ImportError:
        return "matplotlib is not installed (make bench installs requirements-bench.lock)"
    conns = [r["connections"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    for who, style, colour in (("shop", "-o", "tab:blue"), ("raw", "--s", "tab:orange")):
        left.plot(conns, [r[who]["rps"] for r in rows], style, color=colour,
                  label=f"{who} orders/s")
        right.plot(conns, [r[who]["p50_ms"] for r in rows], style, color=colour,
                   label=f"{who} p50")
        right.plot(conns, [r[who]["p99_ms"] for r in rows], style, color=colour, alpha=0.4,
                   label=f"{who} p99")
    for ax, title, unit in ((left, "throughput", "orders/s"), (right, "latency", "ms")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(conns, [str(c) for c in conns])
        ax.set_xlabel("connections")
        ax.set_ylabel(unit)
        ax.set_title(f"order saga {title}: shop vs raw")
        ax.grid(True, alpha=0.3)
        ax.legend()
    right.set_yscale("log")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return ""
