"""`SCALE="payment=2" make run`: `python -m ops.run` on free ports with two payment instances.

The supervisor's table lists both; `shopctl status` (a subprocess pointed at that run's
NATS and data dir) lists every instance from the registry, both payments and the gateway
included, each SERVING, with uptime and breakers; the gateway, which has no PAYMENT_ADDR,
finds payment through the registry (/readyz).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ops.process import REPO_ROOT, http_ok
from services.common.settings import SERVICES
from tests.e2e.test_make_run import START_TIMEOUT_S, ShopRun


@pytest.fixture
def scaled_run(tmp_path: Path) -> Iterator[ShopRun]:
    run = ShopRun(tmp_path / "var", {"SCALE": "payment=2"})
    try:
        yield run
    finally:
        run.cleanup()


def shopctl_status(run: ShopRun, nats_url: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.endswith(("_ADDR", "_PORT"))}
    env.update(NATS_URL=nats_url, SHOP_DATA_DIR=str(run.data_dir))
    return subprocess.run([sys.executable, "-m", "ops.shopctl", "status"], cwd=REPO_ROOT,
                          env=env, capture_output=True, text=True, timeout=60)


def rows(out: str) -> dict[str, list[str]]:
    """instance -> its cells (the table's lines split on whitespace)."""
    return {cells[1]: cells for cells in (line.split() for line in out.splitlines()[1:])
            if len(cells) >= 2}


def test_scaled_make_run_and_shopctl_status(scaled_run: ShopRun) -> None:
    scaled_run.wait_for("processes healthy in", START_TIMEOUT_S)
    table = scaled_run.output
    assert "payment-1" in table and "payment-2" in table
    assert "scaled: payment x2" in table
    doc = scaled_run.instances()
    payments = [i for i in doc["instances"] if i["service"] == "payment"]
    assert [i["instance"] for i in payments] == ["payment-1", "payment-2"]
    for inst in payments:
        assert inst["addr"] in table

    # Registration runs in the background once serving: give it a moment.
    deadline = time.monotonic() + 15
    while True:
        status = shopctl_status(scaled_run, doc["nats_url"])
        if status.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert status.returncode == 0, status.stdout + status.stderr
    assert status.stderr == ""  # the registry answered: no fallback note
    header = status.stdout.splitlines()[0].split()
    assert header == ["SERVICE", "INSTANCE", "ADDRESS", "HEALTH", "UPTIME", "BREAKERS", "STORAGE"]
    found = rows(status.stdout)
    assert set(found) == {*(f"{s}-1" for s in SERVICES), "payment-2", "gateway-1"}
    for inst in payments:
        cells = found[inst["instance"]]
        assert cells[:4] == ["payment", inst["instance"], inst["addr"], "SERVING"], cells
        assert len(cells) == 7  # uptime, breakers and storage filled in
        assert cells[6] == "sqlite"
    assert all(cells[3] == "SERVING" for cells in found.values())
    # The order service calls payment: its breaker is reported (closed: nothing failed).
    assert found["order-1"][5].startswith("closed:") and "payment" in found["order-1"][5]
    assert "dashboard.user" in found["gateway-1"][5]  # the gateway's own breakers too
    gw = f"http://127.0.0.1:{scaled_run.ports['gateway']}"
    assert http_ok(f"{gw}/readyz", 5.0)  # payment reached through discovery
    assert scaled_run.interrupt() == 0, scaled_run.output
