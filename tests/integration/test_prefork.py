"""`make run`'s pre-imported parent (ops.prefork): a program forked from it runs as
`python -m` would run it, is adopted by the process that asked for it (which waits for
it and reads its exit status), dies with that process, and anything the parent cannot
start safely is left to the caller to spawn."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ops.prefork import ForkedChild, Prefork
from ops.process import REPO_ROOT

FORKEE = "tests.support.forkee"
ARGV = [sys.executable, "-m", FORKEE]


@pytest.fixture
def forker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Prefork]:
    monkeypatch.setenv("FORKEE_PARENT_ONLY", "the parent's")
    pf = Prefork(tmp_path / "prefork.log", REPO_ROOT, modules=(FORKEE,)).start()
    yield pf
    pf.close()


def _env(out: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "FORKEE_PARENT_ONLY"}
    return {**env, "PYTHONUNBUFFERED": "1", "FORKEE_OUT": str(out), **extra}


def _spawn(forker: Prefork, tmp_path: Path, **extra: str) -> tuple[ForkedChild, Path]:
    out = tmp_path / "facts.json"
    with open(tmp_path / "child.log", "ab") as log:
        child = forker.spawn(ARGV, _env(out, **extra), tmp_path, log)
    assert child is not None, (tmp_path / "prefork.log").read_text()
    return child, out


def _wait_for(path: Path, timeout_s: float = 10.0) -> dict[str, object]:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            facts = json.loads(path.read_text())
            assert isinstance(facts, dict)
            return facts
        except (OSError, ValueError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] == "Z"  # dead, not reaped yet


def test_a_forked_program_runs_as_python_m_runs_it_and_is_our_child(
        forker: Prefork, tmp_path: Path) -> None:
    child, out = _spawn(forker, tmp_path, FORKEE_MARK="given", FORKEE_EXIT="3")
    assert child.wait(10) == 3
    facts = _wait_for(out)
    assert facts["pid"] == child.pid
    assert facts["ppid"] == os.getpid()  # adopted: we wait for it, as for a spawned child
    assert facts["name"] == "__main__"
    assert facts["argv"] == [str(REPO_ROOT / "tests" / "support" / "forkee" / "__main__.py")]
    assert facts["cwd"] == str(tmp_path)
    # Its environment is the one asked for, not the parent's.
    assert facts["mark"] == "given"
    assert facts["parent_only"] is None
    log = (tmp_path / "child.log").read_text()
    assert "hello on stdout" in log and "hello on stderr" in log


def test_a_signal_ends_a_forked_program_and_its_status_says_so(
        forker: Prefork, tmp_path: Path) -> None:
    child, out = _spawn(forker, tmp_path, FORKEE_WAIT="1")
    _wait_for(out)
    assert child.poll() is None
    with pytest.raises(subprocess.TimeoutExpired):
        child.wait(0.05)
    child.send_signal(signal.SIGTERM)
    assert child.wait(10) == -signal.SIGTERM
    # A second fork from the same parent works as the first did.
    out.unlink()
    again, out = _spawn(forker, tmp_path, FORKEE_WAIT="1")
    assert _wait_for(out)["pid"] == again.pid != child.pid
    again.kill()
    assert again.wait(10) == -signal.SIGKILL


def test_what_the_parent_cannot_start_safely_is_left_to_the_caller(
        forker: Prefork, tmp_path: Path) -> None:
    out = tmp_path / "facts.json"
    with open(tmp_path / "child.log", "ab") as log:
        # Another command, or a module the parent did not import.
        assert forker.spawn([sys.executable, "-c", "pass"], _env(out), tmp_path, log) is None
        assert forker.spawn([sys.executable, "-m", "json.tool"], _env(out), tmp_path,
                            log) is None
        # Other interpreter settings than the parent started with.
        assert forker.spawn(ARGV, _env(out, PYTHONHASHSEED="7"), tmp_path, log) is None
        # The refusal left the parent serving: the next fork works.
        child = forker.spawn(ARGV, _env(out), tmp_path, log)
        assert child is not None and child.wait(10) == 0
        forker.close()
        assert forker.spawn(ARGV, _env(out), tmp_path, log) is None


def test_a_parent_whose_imports_left_a_thread_running_never_forks(tmp_path: Path) -> None:
    threaded = "tests.support.threaded_forkee"
    pf = Prefork(tmp_path / "prefork.log", REPO_ROOT, modules=(threaded,)).start()
    try:
        with open(tmp_path / "child.log", "ab") as log:
            assert pf.spawn([sys.executable, "-m", threaded], _env(tmp_path / "facts.json"),
                            tmp_path, log) is None
    finally:
        pf.close()


_SUPERVISOR = """
import os, sys, time
from pathlib import Path
from ops.prefork import Prefork
tmp = Path(sys.argv[1])
pf = Prefork(tmp / "prefork.log", Path.cwd(), modules=("tests.support.forkee",)).start()
env = {**os.environ, "PYTHONUNBUFFERED": "1", "FORKEE_OUT": str(tmp / "facts.json"),
       "FORKEE_WAIT": "1"}
with open(tmp / "child.log", "ab") as log:
    child = pf.spawn([sys.executable, "-m", "tests.support.forkee"], env, tmp, log)
print(child.pid if child else "none", pf.pid, flush=True)
time.sleep(60)
"""


def test_a_forked_program_dies_with_its_supervisor(tmp_path: Path) -> None:
    supervisor = subprocess.Popen(
        [sys.executable, "-c", _SUPERVISOR, str(tmp_path)], cwd=REPO_ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE, text=True)
    try:
        assert supervisor.stdout is not None
        child_pid, parent_pid = supervisor.stdout.readline().split()
        assert child_pid != "none", (tmp_path / "prefork.log").read_text()
        assert _wait_for(tmp_path / "facts.json")["ppid"] == supervisor.pid
    finally:
        supervisor.kill()
        supervisor.wait()
        if supervisor.stdout is not None:
            supervisor.stdout.close()
    deadline = time.monotonic() + 10
    while not (_gone(int(child_pid)) and _gone(int(parent_pid))):
        assert time.monotonic() < deadline, "a forked program outlived its supervisor"
        time.sleep(0.02)
