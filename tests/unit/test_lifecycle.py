"""Lifecycle: stops run in reverse order of start, a failing one does not stop the rest."""

from __future__ import annotations

import pytest

from services.common.lifecycle import Lifecycle


async def test_stops_run_last_started_first_and_once() -> None:
    stopped: list[str] = []
    life = Lifecycle()
    for name in ("link", "discovery", "database", "tasks", "server", "registration"):
        async def stop(name: str = name) -> None:
            stopped.append(name)
        life.push(name, stop)
    assert life.started[0] == "link"
    await life.stop()
    assert stopped == ["registration", "server", "tasks", "database", "discovery", "link"]
    await life.stop()  # nothing left
    assert len(stopped) == 6


async def test_a_failing_stop_is_logged_and_the_others_still_run(
        caplog: pytest.LogCaptureFixture) -> None:
    stopped: list[str] = []

    async def first() -> None:
        stopped.append("first")

    async def broken() -> None:
        raise RuntimeError("boom")

    async with Lifecycle() as life:
        life.push("first", first)
        life.push("broken", broken)
    assert stopped == ["first"]
    assert any(r.getMessage() == "stop hook failed" and getattr(r, "part", "") == "broken"
               for r in caplog.records)
