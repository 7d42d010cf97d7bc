"""Bounded waits and task stops that never lose a cancellation (services.common.cancellation),
and the registry refresh whose lost cancel once hung a service's stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from typing import Any

import pytest

from services.common import cancellation
from services.common.cancellation import cancel_and_wait, raise_if_cancelled, within
from services.common.registry import Instance, Registration

REPO = Path(__file__).resolve().parents[2]


async def test_within_keeps_a_cancel_that_comes_as_the_wait_ends() -> None:
    """The race asyncio.wait_for loses on 3.11: the awaited result and the cancel land in
    the same loop turn. The caller must still see its cancellation."""
    fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    ran_on = False

    async def body() -> None:
        nonlocal ran_on
        await within(fut, 5.0)
        ran_on = True

    task = asyncio.create_task(body())
    await asyncio.sleep(0)  # the task now waits on fut
    fut.set_result(1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not ran_on


async def test_a_cancel_a_library_swallowed_is_raised_at_the_next_check() -> None:
    """What a consumer loop does after a library call (nats' fetch) that may have lost it."""
    fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    checks = 0

    async def loop_body() -> None:
        nonlocal checks
        # The library's call: 3.11 swallows the cancel; where it does not (3.12+), the
        # loop absorbs it here the same way, and the check must still raise it.
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(fut, 5.0)
        checks += 1
        raise_if_cancelled()
        checks += 100  # never reached

    task = asyncio.create_task(loop_body())
    await asyncio.sleep(0)
    fut.set_result(1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert checks == 1


async def test_no_cancel_pending_after_a_timeout_of_within() -> None:
    with pytest.raises(TimeoutError):
        await within(asyncio.Event().wait(), 0.01)
    raise_if_cancelled()  # the timeout's own cancel is not left counted


async def test_within_times_out_and_returns_results() -> None:
    assert await within(asyncio.sleep(0, "done"), 1.0) == "done"
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await within(asyncio.Event().wait(), 0.05)
    assert time.monotonic() - started < 1.0


async def test_a_task_that_swallowed_its_cancel_is_cancelled_again() -> None:
    swallowed = 0

    async def refresh_loop() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(0.02)
            except asyncio.CancelledError:
                if swallowed:
                    raise
                swallowed += 1  # what a lost cancel looks like to the loop

    task = asyncio.create_task(refresh_loop())
    await asyncio.sleep(0.05)
    started = time.monotonic()
    assert await cancel_and_wait([task], 3.0) == []
    assert task.cancelled() and swallowed == 1
    # Cancelled again once the patient part of the bound is over, well before its end.
    assert time.monotonic() - started < 3.0 - cancellation.RECANCEL_WINDOW_S + 0.5


async def test_a_clean_up_on_cancel_is_not_cut_short() -> None:
    handed_back = False

    async def relay() -> None:
        nonlocal handed_back
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.sleep(1.5)  # a batch finished, a lease handed back
            handed_back = True

    task = asyncio.create_task(relay())
    await asyncio.sleep(0)
    assert await cancel_and_wait([task]) == []
    assert handed_back


async def test_a_task_that_never_ends_is_given_up_after_the_bound(
        caplog: pytest.LogCaptureFixture) -> None:
    release = asyncio.Event()

    async def stubborn() -> None:
        while not release.is_set():
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                continue

    task = asyncio.create_task(stubborn(), name="stubborn")
    await asyncio.sleep(0)  # inside its loop
    started = time.monotonic()
    with caplog.at_level(logging.ERROR, logger="shop.tasks"):
        stuck = await cancel_and_wait([task], 0.3)
    assert stuck == [task]
    assert 0.3 <= time.monotonic() - started < 1.5
    assert any(getattr(r, "task", "") == "stubborn" for r in caplog.records)
    release.set()
    await task


async def test_errors_of_stopped_tasks_are_retrieved() -> None:
    async def fails() -> None:
        raise ValueError("boom")

    task = asyncio.create_task(fails())
    await asyncio.sleep(0)
    assert await cancel_and_wait([task], 1.0) == []
    assert isinstance(task.exception(), ValueError)


class _RacingKV:
    """A bucket whose put answers exactly when the stop comes."""

    def __init__(self) -> None:
        self.put_called = asyncio.Event()
        self.answer: asyncio.Future[int] | None = None

    async def status(self) -> Any:
        raise RuntimeError("no status here: the default TTL applies")

    def put(self, key: str, value: bytes) -> asyncio.Future[int]:
        self.answer = asyncio.get_running_loop().create_future()
        self.put_called.set()
        return self.answer


class _Link:
    ttl_s = 3.0

    def __init__(self, kv: _RacingKV) -> None:
        self._kv = kv
        self.kv_now = None

    async def kv(self) -> _RacingKV:
        return self._kv

    async def reopen(self) -> _RacingKV:
        return self._kv


async def test_registration_stops_when_its_put_answers_as_the_stop_comes() -> None:
    kv = _RacingKV()
    reg = Registration(_Link(kv), Instance(service="user", instance_id="user-1",  # type: ignore[arg-type]
                                           addr="127.0.0.1:1"), breakers=dict)
    reg.start()
    await within(kv.put_called.wait(), 2.0)
    assert kv.answer is not None
    kv.answer.set_result(1)
    started = time.monotonic()
    await within(reg.stop(timeout=2.0), 5.0)  # hung for ever before
    assert time.monotonic() - started < 2.5
    assert reg._task is None


def test_the_code_bounds_its_waits_with_within() -> None:
    """asyncio.wait_for loses cancellations on 3.11; `within` is the one bounded wait."""
    users = [str(path.relative_to(REPO)) for top in ("services", "gateway", "ops", "bench")
             for path in sorted((REPO / top).rglob("*.py"))
             if "asyncio.wait_for(" in path.read_text()]
    assert users == []
