"""`make run DB=postgres`: the embedded PostgreSQL under <data dir>/pg comes up first, the
services keep their data there (no SQLite file), status shows it, and it stops last."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.common.settings import SERVICES
from tests.e2e.test_make_run import START_TIMEOUT_S, ShopRun, pid_gone, shopctl


@pytest.fixture
def pg_run() -> Iterator[ShopRun]:
    # Not under pytest's private temp dir: as root the server runs as its own user, which
    # must be able to reach <data dir>/pg.
    root = Path(tempfile.mkdtemp(prefix="shop-run-pg-"))
    root.chmod(0o711)
    run = ShopRun(root / "var", {"DB": "postgres"})
    try:
        yield run
    finally:
        run.cleanup()
        pid_file = root / "var" / "pg" / "postmaster.pid"
        if pid_file.exists():  # only when the run died before stopping it
            pid = int(pid_file.read_text().split()[0])
            if not pid_gone(pid):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(root, ignore_errors=True)


def test_make_run_on_postgres(pg_run: ShopRun) -> None:
    pg_run.wait_for("processes healthy in", START_TIMEOUT_S)
    assert "PostgreSQL up under" in pg_run.output
    pg_dir = pg_run.data_dir / "pg"
    postmaster = int((pg_dir / "postmaster.pid").read_text().split()[0])
    status = shopctl(pg_run, "status")
    assert status.returncode == 0, status.stdout + status.stderr
    storage = {line.split()[0]: line.split()[-1] for line in status.stdout.splitlines()[1:]}
    for name in SERVICES:
        assert storage[name] == "postgres", status.stdout
    # Every service keeps its data in PostgreSQL: not one SQLite file was made.
    assert sorted(p.name for p in pg_run.data_dir.glob("*.db*")) == []
    assert pg_run.interrupt() == 0, pg_run.output
    assert pid_gone(postmaster), "PostgreSQL left running"
    assert "stopped" in pg_run.output
