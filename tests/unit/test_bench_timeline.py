"""The bench's timeline of one order: spans lined up against their CreateOrder."""

from __future__ import annotations

from opentelemetry.proto.trace.v1 import trace_pb2

from bench.timeline import ROOT, format_timeline, order_timeline
from ops.otlp import Received

MS = 1_000_000  # ns


def _span(trace: int, span: int, name: str, kind: int, start_ms: float, end_ms: float,
          parent: int = 0) -> trace_pb2.Span:
    # kind: SpanKind's wire values (1 internal, 2 server, 3 client, 5 consumer).
    return trace_pb2.Span(
        trace_id=trace.to_bytes(16, "big"), span_id=span.to_bytes(8, "big"),
        parent_span_id=parent.to_bytes(8, "big") if parent else b"", name=name,
        kind=trace_pb2.Span.SpanKind.ValueType(kind),
        start_time_unix_nano=int(1e12 + start_ms * MS), end_time_unix_nano=int(1e12 + end_ms * MS))


def _order(trace: int, shift: float, reserve_server_ms: float) -> list[Received]:
    """One traced order: the root, a write, a reserve call and its server side, and an
    event handled after the answer (left out of the timeline)."""
    base = 1000 * trace
    return [
        Received(ROOT[0], _span(trace, base + 1, ROOT[1], 2, shift, shift + 10)),
        Received("shop-order", _span(trace, base + 2, "write order", 3, shift + 0.5,
                                     shift + 1.5, base + 1)),
        Received("shop-order", _span(trace, base + 3,
                                     "shop.inventory.v1.InventoryService/ReserveStock", 3,
                                     shift + 2, shift + 5, base + 1)),
        Received("shop-inventory", _span(trace, base + 4,
                                         "shop.inventory.v1.InventoryService/ReserveStock",
                                         2, shift + 3, shift + 3 + reserve_server_ms,
                                         base + 3)),
        Received("shop-order", _span(trace, base + 5, "write order", 3, shift + 8,
                                     shift + 9, base + 1)),
        Received("shop-shipping", _span(trace, base + 6, "process order.confirmed", 5,
                                        shift + 20, shift + 21)),
    ]


def test_steps_are_medians_from_the_root_in_order_and_calls_show_their_transit() -> None:
    spans = [*_order(1, 0.0, 1.0), *_order(2, 100.0, 2.0), *_order(3, 200.0, 1.5)]
    doc = order_timeline(spans)
    assert doc["orders"] == 3
    assert doc["root_p50_ms"] == 10.0
    steps = [(s["service"], s["name"], s["kind"], s["nth"], s["start_ms"], s["duration_ms"])
             for s in doc["steps"]]
    assert steps == [
        ("shop-order", ROOT[1], "server", 0, 0.0, 10.0),
        ("shop-order", "write order", "client", 0, 0.5, 1.0),
        ("shop-order", "shop.inventory.v1.InventoryService/ReserveStock", "client", 0, 2.0,
         3.0),
        ("shop-inventory", "shop.inventory.v1.InventoryService/ReserveStock", "server", 0,
         3.0, 1.5),
        ("shop-order", "write order", "client", 1, 8.0, 1.0),
    ]
    [call] = doc["calls"]
    assert call["call"] == "shop-order -> shop.inventory.v1.InventoryService/ReserveStock"
    assert (call["client_ms"], call["server_ms"], call["transit_ms"]) == (3.0, 1.5, 1.5)
    lines = format_timeline(doc)
    assert "3 orders traced" in lines[0]
    assert any("transit" in line and "1.50 ms of 3.00" in line for line in lines)


def test_a_step_in_few_orders_and_traces_without_one_root_are_left_out() -> None:
    spans = [*_order(1, 0.0, 1.0), *_order(2, 100.0, 1.0), *_order(3, 200.0, 1.0)]
    # A retry seen once in three orders, and a trace without a CreateOrder at all.
    spans.append(Received("shop-order", _span(1, 1900, "saga charge", 1, 6.0, 7.0)))
    spans.append(Received("shop-payment", _span(9, 9001, "write payment", 3, 0.0, 1.0)))
    doc = order_timeline(spans)
    assert doc["orders"] == 3
    assert all(s["name"] not in ("saga charge", "write payment") for s in doc["steps"])
    assert order_timeline([])["orders"] == 0
