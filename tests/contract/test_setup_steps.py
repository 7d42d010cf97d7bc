"""The first `make run` / `make test` on a fresh machine says what it does, step by step.

`make -n` with the pinned set and a contract marked changed prints the recipe a fresh
clone runs: each step announces itself with a `==> ` line before it starts, and pip runs
without -q, so its own progress reaches the terminal.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONTRACT = "proto/shop/order/v1/order.proto"


def _dry_run(*targets: str) -> list[str]:
    make = shutil.which("make")
    if make is None:
        pytest.fail("make is not installed")
    out = subprocess.run(
        [make, "-n", "-W", "requirements.lock", "-W", CONTRACT, *targets],
        cwd=ROOT, capture_output=True, text=True, check=True, timeout=60,
    ).stdout
    return out.splitlines()


def _announced(lines: list[str]) -> list[str]:
    return [ln for ln in lines if ln.startswith('echo "==> ')]


def test_the_first_make_run_announces_each_step_before_it_runs() -> None:
    lines = _dry_run("venv", "gen/.stamp")
    steps = [ln.split("==> ", 1)[1].split(":", 1)[0] for ln in _announced(lines)]
    assert steps == ["venv", "pip install", "pip install", "nats-server", "proto"], steps
    # Every step's line comes before the command it announces.
    venv = next(i for i, ln in enumerate(lines) if "-m venv" in ln and "echo" not in ln)
    assert lines[venv - 1].startswith('echo "==> venv')
    protogen = lines.index(".venv/bin/python -m ops.protogen")
    assert lines[protogen - 1].startswith('echo "==> proto')


def test_pip_shows_its_own_progress_for_the_dependencies() -> None:
    (pip,) = [ln for ln in _dry_run("venv") if "-r requirements.lock" in ln]
    assert " -q" not in pip and "--progress-bar on" in pip


def test_make_tests_set_up_announces_chromium_and_the_deploy_check() -> None:
    makefile = (ROOT / "Makefile").read_text()
    browser = makefile.split("browser-deps:", 1)[1].split("\n\n", 1)[0]
    assert '==> chromium' in browser
    # apt's own output is shown, not sent to /dev/null.
    assert "/dev/null\n" not in browser.split("apt-get update", 1)[1]
    assert any("==> deploy-check" in ln for ln in _dry_run("deploy-check"))
