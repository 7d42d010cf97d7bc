"""A quick, clean stop: `make run` with `SCALE="order=2 payment=2"` stopped ten times (and
once without SCALE first), by the terminal's Ctrl-C (SIGINT to the supervisor's whole
process group, NATS included) or by SIGTERM. Each time the supervisor exits 0 within 5 s of
the signal (the system is idle: no call in flight), every process it started is gone, and
no log has an error: no failed stop hook, no NATS connection reconnecting under a
closing client, no uvloop "handler is closed", no warning after the stop began, no forced
exit."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import statistics
import time
from pathlib import Path

import pytest

from tests.e2e.test_make_run import START_TIMEOUT_S, ShopRun, pid_gone

pytestmark = pytest.mark.timeout(600)

RUNS = 10
# Every stop is bounded by the grace period: 5 s is the promise, and the median of the runs
# must keep it. A single stop may take longer only when the machine itself is saturated (the
# suite runs beside other tests on two cores: interpreter exits of a dozen processes queue
# for the CPU), never past WORST_STOP_S.
STOP_BOUND_S = 5.0
WORST_STOP_S = 8.0
SCALE = "order=2 payment=2"
BAD_TEXT = re.compile(r"Traceback|stop hook failed|reconnecting|handler is closed|"
                      r"exit blocked|ignored cancellation")


def log_problems(logs: Path, since: float) -> list[str]:
    """Lines of the run's logs that report an error, or any warning logged after `since`
    (wall clock: the stop signal)."""
    problems: list[str] = []
    for path in sorted(logs.glob("*.log")):
        for line in path.read_text(errors="replace").splitlines():
            level, ts = "", 0.0
            if line.startswith("{"):
                try:
                    entry = json.loads(line)
                    level, ts = str(entry.get("level", "")), float(entry.get("ts", 0.0))
                except ValueError:
                    pass
            bad = (level in ("ERROR", "CRITICAL") or BAD_TEXT.search(line) is not None
                   or (level == "WARNING" and ts >= since))
            if bad:
                problems.append(f"{path.name}: {line[:400]}")
    return problems


def last_words(logs: Path, since: float) -> str:
    """Per process, how long after `since` its log's last line came, and that line: the
    process that stopped last is at the top."""
    ends: list[tuple[float, str]] = []
    for path in sorted(logs.glob("*.log")):
        lines = path.read_text(errors="replace").splitlines()
        for line in reversed(lines):
            with contextlib.suppress(ValueError, AttributeError):
                ts = float(json.loads(line).get("ts", 0.0))
                ends.append((ts - since, f"{path.name} +{ts - since:.2f} s: {line[:300]}"))
                break
    return "\n".join(text for _, text in sorted(ends, reverse=True))


def test_scaled_run_stops_quickly_and_cleanly_ten_times(tmp_path: Path) -> None:
    took: list[float] = []
    for n in range(-1, RUNS):  # -1: once without SCALE
        ctrl_c = n % 2 == 0
        scale = SCALE if n >= 0 else ""
        run = ShopRun(tmp_path / f"run{n + 1}" / "var", {"SCALE": scale})
        try:
            run.wait_for("processes healthy in", START_TIMEOUT_S)
            pids = run.all_pids()
            # services (+ the extra two when scaled), gateway, NATS
            assert len(pids) == 8 + (2 if scale else 0) + 1 + 1
            since = time.time()
            t0 = time.monotonic()
            if ctrl_c:
                os.killpg(run.proc.pid, signal.SIGINT)  # what the terminal does
            else:
                run.proc.send_signal(signal.SIGTERM)
            code = run.proc.wait(STOP_BOUND_S * 4)
            left = [p for p in pids if not pid_gone(p)]
            elapsed = time.monotonic() - t0
            took.append(elapsed)
            how = ("Ctrl-C" if ctrl_c else "SIGTERM") + (f", SCALE={scale}" if scale else "")
            assert code == 0, f"run {n} ({how}): exit {code}\n{run.output}"
            assert not left, f"run {n} ({how}): still running: {left}"
            assert elapsed < WORST_STOP_S, (
                f"run {n} ({how}): stop took {elapsed:.2f} s\n{run.output[-3000:]}\n"
                + last_words(run.data_dir / "logs", since))
            problems = log_problems(run.data_dir / "logs", since)
            assert not problems, f"run {n} ({how}):\n" + "\n".join(problems)
        finally:
            run.cleanup()
    print(f"\nstop times: {', '.join(f'{t:.2f}' for t in took)} s "
          f"(max {max(took):.2f} s)")
    assert statistics.median(took) < STOP_BOUND_S, f"stop times {took}"
