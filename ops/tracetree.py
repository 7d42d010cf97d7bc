"""An order's span tree from the spans a local receiver kept (ops/otlp.py's JSON lines):
what `shopctl trace ORDER_ID` prints."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["load_spans", "order_traces", "render"]

_KIND = {1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}


def load_spans(path: Path) -> list[dict[str, Any]]:
    spans: list[dict[str, Any]] = []
    with path.open() as f:
        for line in f:
            try:
                spans.append(json.loads(line))
            except ValueError:
                continue  # a line cut short by a crash
    return spans


def order_traces(spans: Iterable[dict[str, Any]], order_id: str) -> list[str]:
    """The trace ids of the spans that name the order (its saga steps), oldest first."""
    first: dict[str, int] = {}
    for s in spans:
        if s.get("attributes", {}).get("shop.order.id") == order_id:
            tid = s["trace_id"]
            first[tid] = min(first.get(tid, s["start_ns"]), s["start_ns"])
    return sorted(first, key=first.__getitem__)


def render(spans: Iterable[dict[str, Any]], trace_id: str) -> list[str]:
    """One line per span, children indented under their parent, in start order."""
    mine = [s for s in spans if s["trace_id"] == trace_id]
    ids = {s["span_id"] for s in mine}
    children: dict[str, list[dict[str, Any]]] = {}
    for s in mine:
        parent = s["parent_id"] if s["parent_id"] in ids else ""
        children.setdefault(parent, []).append(s)
    lines = [f"trace {trace_id}"]

    def walk(parent: str, depth: int) -> None:
        for s in sorted(children.get(parent, []), key=lambda x: x["start_ns"]):
            ms = (s["end_ns"] - s["start_ns"]) / 1e6
            flag = "  ERROR" if s.get("error") else ""
            kind = _KIND.get(s.get("kind", 0), "")
            lines.append(f"{'  ' * depth}{s['name']}  [{s['service']} {kind}]"
                         f"  {ms:.1f} ms{flag}")
            walk(s["span_id"], depth + 1)

    walk("", 1)
    return lines
