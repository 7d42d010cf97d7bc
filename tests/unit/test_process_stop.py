"""A graceful stop that runs out of time: the supervisor kills the process and names it."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from ops.process import ServiceProcess, System

# Up once its marker exists; ignores SIGTERM when told to (a stop that never finishes).
SCRIPT = """
import pathlib, signal, sys, time
if sys.argv[2] == "ignore":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
pathlib.Path(sys.argv[1]).touch()
time.sleep(60)
"""


def _started(tmp_path: Path, name: str, term: str) -> ServiceProcess:
    marker = tmp_path / f"{name}.up"
    proc = ServiceProcess(name, data_dir=tmp_path, nats_url="nats://127.0.0.1:1",
                          instance=f"{name}-1",
                          argv=[sys.executable, "-c", SCRIPT, str(marker), term]).start()
    deadline = time.monotonic() + 20
    while not marker.exists():
        assert time.monotonic() < deadline, f"{name} never came up"
        time.sleep(0.02)
    return proc


def test_a_process_still_running_after_the_grace_is_killed_and_named(tmp_path: Path) -> None:
    stubborn = _started(tmp_path, "payment", "ignore")
    polite = _started(tmp_path, "cart", "default")
    system = System(tmp_path, "nats://127.0.0.1:1", [stubborn, polite])
    started = time.monotonic()
    assert system.stop(timeout=0.5) == ["payment-1"]
    assert time.monotonic() - started < 5
    assert stubborn.killed_after_stop and not polite.killed_after_stop
    assert not stubborn.running and not polite.running
