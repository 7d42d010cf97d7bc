"""The grown scenario's goals and its table in the report."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.fill import MANIFEST, Filled
from bench.grown import _best, _row, settle_wait_s
from bench.report import _print_grown
from bench.stats import Measured


def test_throughput_goal_is_a_share_of_the_empty_systems() -> None:
    assert _row("orders_per_s", 300.0, 280.0)["met"]
    missed = _row("orders_per_s", 300.0, 260.0)
    assert not missed["met"] and missed["ratio"] == pytest.approx(0.867, abs=1e-3)
    assert not _row("orders_per_s", 0.0, 280.0)["met"]  # no empty figure: nothing to compare


def test_latency_goals_bound_the_p99_against_the_empty_systems() -> None:
    assert _row("list_p99_ms", 10.0, 11.9)["met"]
    assert not _row("list_p99_ms", 10.0, 12.5)["met"]
    assert not _row("dashboard_p99_ms", 10.0, 0.0)["met"]  # not measured is not met


def test_cpu_per_request_is_reported_beside_the_figure() -> None:
    row = _row("list_p99_ms", 10.0, 11.0, (2.0, 2.2))
    assert row["cpu_ms_per_op"] == {"empty": 2.0, "filled": 2.2, "ratio": 1.1}
    assert "cpu_ms_per_op" not in _row("cold_start_s", 1.0, 1.1)


def test_cold_start_goal_is_an_absolute_bound() -> None:
    assert _row("cold_start_s", 1.0, 2.9)["met"]
    assert not _row("cold_start_s", 1.0, 3.1)["met"]


def test_the_report_prints_each_figure_with_its_goal(capsys: pytest.CaptureFixture[str]) -> None:
    rows = [_row("orders_per_s", 300.0, 290.0, (10.0, 11.0)), _row("cold_start_s", 1.5, 3.5)]
    _print_grown({"sizes": {"orders": 1_000_000, "users": 100_000, "inbox": 1_000_000,
                            "events": 1_000_000},
                  "fill": {"reused": False, "fill_s": 120.0}, "clone_s": 3.2, "wall_s": 80,
                  "rows": rows, "notes": ["grown filled: waited"]})
    out = capsys.readouterr().out
    assert "1,000,000 orders, 100,000 users" in out and "filled now in 120 s" in out
    lines = [ln for ln in out.splitlines() if "orders/s" in ln or "cold start" in ln]
    assert len(lines) == 2
    assert " met " in lines[0] and "0.97" in lines[0]
    assert lines[0].rstrip().endswith("10.00 ms, 11.00 ms (1.10x)")
    assert lines[1].rstrip().endswith("MISSED")
    assert "note: grown filled: waited" in out


def test_a_round_without_a_successful_answer_is_no_best_latency() -> None:
    served = Measured(rps=50.0, p50_ms=20.0, p99_ms=90.0, ok=500)
    failed = Measured(rps=0.0, p50_ms=0.0, p99_ms=0.0, ok=0, errors=300)
    assert _best([served, failed]) == {"rps": 50.0, "p50_ms": 20.0, "p99_ms": 90.0,
                                       "cpu_ms_per_op": 0.0}
    assert _best([failed])["p99_ms"] == 0.0


def test_cold_starts_wait_until_the_fills_events_leave_the_duplicate_window(
        tmp_path: Path) -> None:
    fresh = Filled(tmp_path, {"stream": {"published_until": 1000.0}}, reused=False)
    assert settle_wait_s(fresh, now=1030.0, window_s=120.0) == pytest.approx(91.0)
    assert settle_wait_s(fresh, now=1200.0, window_s=120.0) == 0.0
    # A fill kept before the field existed: its manifest's time stands in.
    (tmp_path / MANIFEST).write_text("{}")
    written = (tmp_path / MANIFEST).stat().st_mtime
    older = Filled(tmp_path, {"stream": {}}, reused=True)
    assert settle_wait_s(older, now=written + 10.0, window_s=120.0) == pytest.approx(111.0)
    assert settle_wait_s(Filled(tmp_path / "gone", {}, reused=True), now=0.0) == 0.0
