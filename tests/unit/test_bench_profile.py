"""The bench's profile summary, flame graph and load curve arithmetic."""

from __future__ import annotations

from pathlib import Path

from bench.curve import curve_rows, one_connection_goal
from bench.flame import write_flame_svg
from bench.profile import _self_costs
from bench.stats import Measured

STACKS = """\
main (a.py:1);run (loop.py:2);handle (svc.py:3);encode (json.py:4) 30
main (a.py:1);run (loop.py:2);handle (svc.py:3) 10
main (a.py:1);run (loop.py:2);select (selectors.py:468) 50
main (a.py:1);run (loop.py:2);commit (db.py:9) 20
"""


def test_self_costs_count_leaves_and_leave_idle_waits_out(tmp_path: Path) -> None:
    raw = tmp_path / "p.txt"
    raw.write_text(STACKS)
    leaf, total, idle = _self_costs(raw)
    assert (total, idle) == (110, 50)
    assert leaf.most_common(3) == [("encode (json.py:4)", 30), ("commit (db.py:9)", 20),
                                   ("handle (svc.py:3)", 10)]


def test_native_time_below_the_loop_or_a_thread_is_named_as_such(tmp_path: Path) -> None:
    raw = tmp_path / "p.txt"
    raw.write_text("main (m.py:1);Runner.run (asyncio/runners.py:118) 40\n"
                   "Thread._bootstrap (threading.py:1002);Thread.run (threading.py:982) 25\n"
                   "main (m.py:1);Runner.run (asyncio/runners.py:118);handle (svc.py:3) 5\n")
    leaf, total, idle = _self_costs(raw)
    assert (total, idle) == (70, 0)
    assert leaf.most_common() == [
        ("native code under the event loop (uvloop, grpc core, TLS)", 40),
        ("native code in a thread (grpc poller, SQLite)", 25), ("handle (svc.py:3)", 5)]


def test_flame_graph_draws_each_frame_with_its_share(tmp_path: Path) -> None:
    raw = tmp_path / "p.txt"
    raw.write_text(STACKS)
    svg = tmp_path / "p.svg"
    write_flame_svg(raw, svg, title="t")
    text = svg.read_text()
    assert text.startswith("<svg") and text.rstrip().endswith("</svg>")
    assert "encode (json.py:4) (30 samples, 27.3%)" in text
    assert "all (110 samples, 100.0%)" in text


def test_curve_rows_compare_each_level_with_the_raw_saga() -> None:
    def measured(rps: float, p50: float) -> Measured:
        return Measured(rps, p50, p50 * 2, ok=int(rps))

    rows = curve_rows(lambda c: measured(50.0 * c, 10.0), lambda c: measured(100.0 * c, 4.0),
                      levels=(1, 4))
    assert [r["connections"] for r in rows] == [1, 4]
    assert rows[1]["ratio"] == 0.5 and rows[0]["p50_vs_raw"] == 2.5
    assert one_connection_goal(rows) == {"met": False, "factor": 2.5, "goal": 2.0}
