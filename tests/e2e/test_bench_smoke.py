"""`python -m bench --smoke` runs every scenario and writes the JSON report (with the
empty-versus-grown scenario on a small fill).

Every scenario and its raw baseline must really have run (no failure recorded, operations
done, a rate measured): a scenario that failed is written with zeros and must fail this
test. How fast they ran is reported, never asserted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ops.process import REPO_ROOT

SCENARIOS = ("product_get", "dashboard", "order", "outbox", "consumer")
FIELDS = ("rps", "p50_ms", "p99_ms", "raw_rps", "ratio")


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@pytest.mark.slow
@pytest.mark.timeout(210)
def test_bench_smoke_writes_every_scenario(tmp_path: Path) -> None:
    out = tmp_path / "bench" / "latest.json"
    env = {k: v for k, v in os.environ.items() if k != "SHOP_BENCH_URL"}
    env["SHOP_BENCH_OUT"] = str(out)
    # The smoke run proves the harness, beside other tests on a busy machine: a dashboard
    # part there can miss the production 0.6 s budget, and a degraded answer does not count
    # as a dashboard served. `make bench` keeps the production budget.
    env["GATEWAY_DASHBOARD_TIMEOUT_S"] = "5"
    proc = subprocess.run([sys.executable, "-m", "bench", "--smoke"], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=200)
    assert out.exists(), f"no report written:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    doc = json.loads(out.read_text())
    assert doc["run"]["failures"] == {}, doc["run"]["failures"]
    for name in SCENARIOS:
        scenario = doc["scenarios"][name]
        for field in FIELDS:
            assert _number(scenario[field]), (name, field, scenario.get(field))
        assert scenario["tool"] != "failed", (name, scenario["detail"])
        assert scenario["ok"] > 0 and scenario["rps"] > 0, (name, scenario)
        assert scenario["raw_rps"] > 0, (name, "raw baseline did not run", scenario)
    # The order scenario counted its durable writes from the services' own metrics: the
    # order service commits and publishes for every order.
    writes = doc["scenarios"]["order"]["durable_per_op"]
    assert writes["db_commits"] > 0 and writes["jetstream_publishes"] > 0, writes
    assert writes["by_process"]["order-1"]["commits"] > 0, writes
    assert _number(doc["cold_start_s"]) and doc["cold_start_s"] > 0
    assert isinstance(doc["rss_mb"], dict)
    assert isinstance(doc["machine"], dict)
    # The empty-versus-grown scenario ran on a small fill (kept beside the figures).
    grown = doc["grown"]
    assert grown["fill"]["counts"]["orders"] == grown["sizes"]["orders"] > 0
    assert {r["figure"] for r in grown["rows"]} == {
        "orders_per_s", "list_p99_ms", "dashboard_p99_ms", "cold_start_s"}
    # (ok, errors) of every round on each side: a failure says what the load saw.
    seen = {side: {name: [(m["ok"], m["errors"]) for m in fig["rounds"]]
                   for name, fig in grown[side].items() if isinstance(fig, dict)}
            for side in ("empty", "filled")}
    for r in grown["rows"]:
        assert _number(r["empty"]) and r["empty"] > 0, (r, seen)
        assert _number(r["filled"]) and r["filled"] > 0, (r, seen)
    assert (out.parent / "filled" / grown["fill"]["dir"].rsplit("/", 1)[-1]).is_dir()
    history = (out.parent / "history.jsonl").read_text().splitlines()
    assert len(history) == 1
