"""Ports picked for listeners: a pick is claimed, so no other pick (in this process or
another one) hands it out again before its listener binds; a stale claim is taken over."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ops import process


@pytest.fixture
def claims(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(process, "_CLAIMS", tmp_path / "claims")
    # A small range: without claims, 40 picks from 50 ports would meet almost surely.
    monkeypatch.setattr(process, "_PICK_LOW", 28000)
    monkeypatch.setattr(process, "_PICK_HIGH", 28050)
    return tmp_path / "claims"


def test_picks_do_not_meet_while_their_listeners_are_not_bound(claims: Path) -> None:
    picked = [process.free_port() for _ in range(40)]
    assert len(set(picked)) == len(picked)
    assert sorted(int(p.name) for p in claims.iterdir()) == sorted(picked)


def test_another_process_sees_the_claims(claims: Path) -> None:
    mine = {process.free_port() for _ in range(30)}
    code = ("import sys; from pathlib import Path; from ops import process as p;"
            f"p._CLAIMS = Path({str(claims)!r}); p._PICK_LOW, p._PICK_HIGH = 28000, 28050;"
            "print(' '.join(str(p.free_port()) for _ in range(15)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(process.__file__).parent.parent).stdout
    theirs = {int(x) for x in out.split()}
    assert len(theirs) == 15 and not mine & theirs


def test_a_stale_claim_is_taken_over(claims: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(process, "_PICK_LOW", 28000)
    monkeypatch.setattr(process, "_PICK_HIGH", 28001)  # one port only
    assert process.free_port() == 28000
    old = time.time() - process._CLAIM_S - 1
    os.utime(claims / "28000", (old, old))
    assert process.free_port() == 28000
