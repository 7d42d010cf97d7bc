"""`make bench PROFILE=1`: py-spy samples every process of the order scenario (in an extra
pass, so the figures of record are not measured under a profiler), writes one flame graph
(SVG) per process under var/bench/profile/, and names each process's top costs.

py-spy is an optional dependency of the bench (requirements-bench.lock). Costs are
"self" samples per function (where the CPU was, not who called it); idle waiting in the
event loop's selector is counted as idle and left out of the top three. py-spy sees
Python frames only: a sample in native code below the loop's run (uvloop, grpc's core,
TLS) or below a thread's run (grpc's poller thread, SQLite's writer) has that Python
frame as its leaf, and is named for what it is rather than as `Runner.run`."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from bench.flame import write_flame_svg

__all__ = ["TOP", "profile_processes", "py_spy"]

TOP = 3
RATE_HZ = 97  # not a multiple of common timer frequencies
# Frames where a sampled thread is waiting, not working.
_IDLE = ("select (selectors.py", "poll (selectors.py", "_worker (concurrent/futures",
         "wait (threading.py", "_wait_for_tstate_lock", "epoll", "select.select")


# Python frames that are a leaf only while the thread runs native code below them.
_NATIVE = (("Runner.run (asyncio/runners.py", "native code under the event loop "
            "(uvloop, grpc core, TLS)"),
           ("Thread.run (threading.py", "native code in a thread (grpc poller, SQLite)"))


def _named(leaf: str) -> str:
    for frame, name in _NATIVE:
        if leaf.startswith(frame):
            return name
    return leaf


def py_spy() -> str:
    """The py-spy executable next to this interpreter, else on PATH; "" when missing."""
    here = Path(sys.executable).parent / "py-spy"
    if here.exists():
        return str(here)
    return shutil.which("py-spy") or ""


def _self_costs(collapsed: Path) -> tuple[Counter[str], int, int]:
    """Samples per leaf function, all samples, idle samples."""
    leaf: Counter[str] = Counter()
    total = idle = 0
    for line in collapsed.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        top = stack.rsplit(";", 1)[-1]
        if any(mark in top for mark in _IDLE):
            idle += n
            continue
        leaf[_named(top)] += n
    return leaf, total, idle


def profile_processes(pids: Mapping[str, int], out_dir: Path, seconds: float,
                      load: Callable[[], object]) -> dict[str, Any]:
    """Sample every pid while `load()` runs; per process: the SVG path and the top costs."""
    exe = py_spy()
    if not exe:
        return {"error": "py-spy is not installed (make bench installs requirements-bench.lock)"}
    out_dir.mkdir(parents=True, exist_ok=True)
    spies: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
    for name, pid in pids.items():
        if name == "nats":  # not a Python process
            continue
        raw = out_dir / f"{name}.txt"
        raw.unlink(missing_ok=True)
        argv = [exe, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))),
                "--rate", str(RATE_HZ), "--nonblocking", "--format", "raw", "-o", str(raw)]
        spies[name] = (subprocess.Popen(argv, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE), raw)
    try:
        load()
    finally:
        result: dict[str, Any] = {"processes": {}}
        for name, (proc, raw) in spies.items():
            try:
                _, err = proc.communicate(timeout=seconds + 30)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err = proc.communicate()
            if proc.returncode != 0 or not raw.exists():
                result["processes"][name] = {
                    "error": err.decode(errors="replace").strip().splitlines()[:1]}
                continue
            leaf, total, idle = _self_costs(raw)
            svg = out_dir / f"{name}.svg"
            write_flame_svg(raw, svg, title=f"{name}: order scenario, {total} samples")
            busy = max(1, total - idle)
            result["processes"][name] = {
                "svg": str(svg), "samples": total, "idle_share": round(idle / max(1, total), 3),
                "top": [{"function": fn, "share_of_busy": round(n / busy, 3)}
                        for fn, n in leaf.most_common(TOP)],
            }
    return result
