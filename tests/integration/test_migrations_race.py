"""SQLite: instances opening one new file at the same moment all start."""

from __future__ import annotations

import threading
from pathlib import Path

from services.common import db as sqlite_backend
from services.common.schema import COMMON, service_migrations
from tests.integration.test_migrations import ALL_COMMON


def test_instances_opening_a_new_file_at_the_same_moment_all_start(tmp_path: Path) -> None:
    """Switching a new file to WAL needs it to itself, and SQLite says "locked" at once
    to whoever comes second: every instance still starts, and each migration runs once."""
    sets = [COMMON, service_migrations("payment")]
    for round_ in range(60):
        path = tmp_path / f"payment-{round_}.db"
        errors: list[BaseException] = []
        applied: list[list[tuple[str, int]]] = []

        def start() -> None:
            try:
                applied.append(sqlite_backend.migrate(path, sets))  # noqa: B023
            except BaseException as e:
                errors.append(e)  # noqa: B023

        threads = [threading.Thread(target=start) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert sorted(v for a in applied for v in a) == [*ALL_COMMON, ("payment", 1)]
