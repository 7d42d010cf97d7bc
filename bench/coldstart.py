"""Cold start: `python -m ops.run` (deps installed) until it reports every process healthy.

Fresh ports (all 0) and a fresh data dir, so nothing is reused: NATS creates its store,
every service its SQLite file and schema, the user service its signing key.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench.procs import pid_alive, stop_pid
from ops.process import REPO_ROOT, env_prefix
from services.common.settings import SERVICES

__all__ = ["cold_start"]

_HEALTHY = re.compile(r"all (\d+) processes healthy in ([0-9.]+) s")
_NATS_PID = re.compile(r"NATS \(JetStream\) up on \S+ \(pid (\d+)\)")


def cold_start(data_dir: Path, *, timeout_s: float = 60.0) -> dict[str, float]:
    """Seconds from spawning the supervisor to its all-healthy line; the supervisor's
    own figure (from its start, after imports) is returned as `reported_s`."""
    # The cold start is the embedded default's (SQLite): `make bench DB=postgres` does not
    # change it.
    env = {k: v for k, v in os.environ.items()
           if k not in ("NATS_URL", "DB") and not k.endswith("_ADDR")
           and not k.endswith("DATABASE_URL")}
    env.update(SHOP_DATA_DIR=str(data_dir), NATS_PORT="0", GATEWAY_PORT="0",
               PYTHONUNBUFFERED="1", GATEWAY_RATE_LIMIT="1000000/second")
    for name in SERVICES:
        env[f"{env_prefix(name)}_PORT"] = "0"
    lines: queue.Queue[str | None] = queue.Queue()
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "ops.run"], cwd=REPO_ROOT, env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    seen: list[str] = []
    elapsed = reported = 0.0
    children: list[int] = []
    try:
        deadline = t0 + timeout_s
        while True:
            try:
                line = lines.get(timeout=max(0.01, deadline - time.perf_counter()))
            except queue.Empty:
                raise TimeoutError(f"ops.run not healthy within {timeout_s}s:\n"
                                   + "".join(seen[-20:])) from None
            if line is None:
                raise RuntimeError(f"ops.run exited ({proc.wait()}):\n" + "".join(seen[-20:]))
            seen.append(line)
            if m := _NATS_PID.search(line):
                children.append(int(m.group(1)))
            if m := _HEALTHY.search(line):
                elapsed = time.perf_counter() - t0
                reported = float(m.group(2))
                break
        children += _instance_pids(data_dir)
    finally:
        _stop_supervisor(proc, children)
    return {"seconds": elapsed, "reported_s": reported}


def _instance_pids(data_dir: Path) -> list[int]:
    try:
        doc = json.loads((data_dir / "run" / "instances.json").read_text())
        return [int(i["pid"]) for i in doc.get("instances", []) if i.get("pid")]
    except (OSError, ValueError, KeyError, TypeError):
        return []


def _stop_supervisor(proc: subprocess.Popen[str], children: list[int]) -> None:
    """SIGTERM the supervisor (it stops its children); then make sure every child is gone."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for pid in children:
        if pid_alive(pid):
            stop_pid(pid)
