"""Every stopped process exits: one whose exit hangs after "stopped" (here a leftover
non-daemon thread the interpreter would wait for forever) exits anyway, with its code and
a warning naming the threads, a few seconds after the stop."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from services.common.server import EXIT_WATCHDOG_S

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(60)


def test_a_stuck_exit_is_forced_after_the_stop(tmp_path: Path) -> None:
    ready = tmp_path / "ready.json"
    log_path = tmp_path / "stuck.log"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "gen")]),
        "ECHO_PORT": "0",
        "SHOP_DATA_DIR": str(tmp_path / "data"),
        "SHOP_READY_FILE": str(ready),
        "SHOP_INSTANCE_ID": "stuck-1",
        "SHOP_REGISTRY": "off",
        "SHOP_GRACE_S": "1",
    }
    with log_path.open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "tests.support.stuck_exit_app"],
                                cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stderr=log)
    try:
        deadline = time.monotonic() + 20
        while not ready.exists():
            assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.02)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(EXIT_WATCHDOG_S + 10)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    entries = [json.loads(line) for line in log_path.read_text().splitlines()
               if line.startswith("{")]
    msgs = [e["msg"] for e in entries]
    assert code == 0
    assert msgs.index("stopped") < msgs.index("exit blocked after the stop; exiting now")
    forced = next(e for e in entries if e["msg"].startswith("exit blocked"))
    assert "leftover-worker" in forced["threads"]
    assert EXIT_WATCHDOG_S <= took < EXIT_WATCHDOG_S + 5, took
