"""The bench's durable writes per request, read from the services' /metrics."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from prometheus_client import generate_latest

from bench.durable import per_op, read_counts, scrape
from bench.report import durable_line
from services.common.metrics import ShopMetrics


def _rendered(commits: int, publishes: int) -> str:
    metrics = ShopMetrics("order")
    for _ in range(commits):
        metrics.db_commit.observe(0.001)
    metrics.outbox_published.inc(publishes)
    return generate_latest(metrics.registry).decode()


def test_the_counts_are_read_from_what_a_service_exports() -> None:
    # The series a service really renders: a renamed metric fails here, not in a bench run.
    assert read_counts(_rendered(3, 5)) == (3.0, 5.0)
    assert read_counts(_rendered(0, 0)) == (0.0, 0.0)
    assert read_counts("# nothing of ours\nother_total 7\n") == (0.0, 0.0)


def test_per_request_figures_count_only_processes_seen_on_both_sides() -> None:
    before = {"order-1": (10.0, 4.0), "payment-1": (2.0, 2.0), "cart-1": (1.0, 0.0)}
    after = {"order-1": (40.0, 24.0), "payment-1": (12.0, 12.0), "cart-1": (1.0, 0.0),
             "late-1": (99.0, 99.0)}
    got = per_op(before, after, ok=10)
    assert got["db_commits"] == 4.0  # (30 + 10) / 10: late-1 was not there before
    assert got["jetstream_publishes"] == 3.0
    # cart-1 wrote nothing in the window: left out of the split.
    assert got["by_process"] == {"order-1": {"commits": 3.0, "publishes": 2.0},
                                 "payment-1": {"commits": 1.0, "publishes": 1.0}}
    assert per_op(before, after, ok=0) == {}


class _Metrics(BaseHTTPRequestHandler):
    body = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def metrics_url() -> Iterator[str]:
    _Metrics.body = _rendered(2, 1).encode()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Metrics)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/metrics"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_a_process_that_does_not_answer_is_left_out_not_counted_as_zero(
        metrics_url: str) -> None:
    with ThreadingHTTPServer(("127.0.0.1", 0), _Metrics) as closed:
        dead = f"http://127.0.0.1:{closed.server_address[1]}/metrics"
    got = scrape({"order-1": metrics_url, "gone-1": dead}, timeout_s=1.0)
    assert got == {"order-1": (2.0, 1.0)}


def test_the_report_line_sets_shop_beside_the_raw_saga() -> None:
    line = durable_line({"db_commits": 2.44, "jetstream_publishes": 5.0, "by_process": {
        "order-1": {"commits": 0.96, "publishes": 2.0},
        "notification-1": {"commits": 0.0, "publishes": 0.0}}})
    assert "shop 2.44 SQLite commits (order-1 0.96) + 5 JetStream publishes" in line
    assert "notification-1" not in line
    assert "raw saga 4 SQLite commits" in line
