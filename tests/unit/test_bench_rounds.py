"""The bench's rounds: a scenario and its raw baseline alternate, each keeps its best
whole round."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.run import BenchRun
from bench.stats import Measured, best_round


def _m(rps: float, p99: float, *, ok: int = 100, cpu: float | None = None) -> Measured:
    extra = {} if cpu is None else {"cpu_ms_per_op_total": cpu}
    return Measured(rps, p99 / 2, p99, ok=ok, tool="t", extra=extra)


def test_the_best_round_is_a_whole_round_and_lists_the_others() -> None:
    slow, fast = _m(100.0, 9.0, cpu=8.0), _m(150.0, 12.0, cpu=6.0)
    best = best_round([slow, fast])
    # Its latency and CPU are the fast round's own, not the lowest of each.
    assert (best.rps, best.p99_ms, best.extra["cpu_ms_per_op_total"]) == (150.0, 12.0, 6.0)
    assert [r["rps"] for r in best.extra["rounds"]] == [100.0, 150.0]
    assert [r["cpu_ms_per_op"] for r in best.extra["rounds"]] == [8.0, 6.0]
    assert "rounds" not in fast.extra  # the round itself is left as measured
    assert best_round([slow]) is slow  # one round: as measured, nothing added


def test_a_failed_round_is_never_best_while_another_served() -> None:
    failed = Measured.failed("boom")
    served = _m(1.0, 500.0)
    assert best_round([failed, served]).ok == 100
    assert best_round([failed]).tool == "failed"
    with pytest.raises(ValueError):
        best_round([])


def test_a_pair_alternates_and_settles_before_each_scenario_round(tmp_path: Path) -> None:
    run = BenchRun(1.0, 0.0, tmp_path)
    run.rounds = 3
    calls: list[str] = []
    raw_rps = iter([500.0, 700.0, 600.0])
    shop_rps = iter([300.0, 200.0, 250.0])

    def raw() -> Measured:
        calls.append("raw")
        return _m(next(raw_rps), 5.0)

    def shop() -> Measured:
        calls.append("shop")
        return _m(next(shop_rps), 9.0)

    run.measure_pair("raw_x", raw, "x", shop, lambda name: calls.append(f"settle {name}"))
    assert calls == ["raw", "settle x", "shop",
                     "settle x", "shop", "raw",
                     "raw", "settle x", "shop"]
    assert run.results["raw_x"].rps == 700.0
    assert run.results["x"].rps == 300.0
    assert len(run.tried["x"]) == 3
