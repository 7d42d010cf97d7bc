"""Waiting with a bound, and stopping tasks, without losing a cancellation.

On Python 3.11 `asyncio.wait_for` swallows a cancel that arrives as its awaitable
finishes: it returns the result and the cancelled task runs on. A loop that refreshes
something (a registry key, a lease) then never ends, and a stop that cancels it and
awaits it waits for ever. Shop's code bounds its waits with `within` (asyncio.timeout,
which re-raises the cancel), and stops its tasks with `cancel_and_wait`, which repeats the
cancel for code it does not own (libraries still call wait_for) and gives up after a
bound instead of hanging the stop. The cancel is repeated only in the last second of the
bound, so a task's own clean-up on cancel (a batch finished, a lease handed back) has the
rest of it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Iterable
from typing import Any, TypeVar

T = TypeVar("T")

log = logging.getLogger("shop.tasks")

# A stop's bound for its tasks; its last part, in which a task still running is
# cancelled again, and how often.
STOP_WAIT_S = 5.0
RECANCEL_WINDOW_S = 1.0
RECANCEL_S = 0.1


async def within(aw: Awaitable[T], seconds: float) -> T:
    """`await aw`, raising TimeoutError after `seconds`; a cancel always propagates."""
    async with asyncio.timeout(seconds):
        return await aw


def raise_if_cancelled() -> None:
    """Raise the current task's cancel if one is pending: a library's wait_for that swallowed
    it (returning a result or its own timeout) leaves it counted on the task, and a loop
    that carries on after such a call would otherwise never stop."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def cancel_and_wait(tasks: Iterable[asyncio.Future[Any]],
                          timeout: float = STOP_WAIT_S,  # noqa: ASYNC109 - a plain bound
                          ) -> list[asyncio.Future[Any]]:
    """Cancel `tasks` and wait until they have ended, at most `timeout` seconds; returns
    those still running (logged). Their results and errors are retrieved: the caller
    stops them, it does not want what they return."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    every = list(tasks)
    running = [t for t in every if not t.done()]
    wait = max(timeout / 2, timeout - RECANCEL_WINDOW_S)
    while running:
        for task in running:
            task.cancel()
        left = deadline - loop.time()
        if left <= 0:
            break
        await asyncio.wait(running, timeout=min(left, wait))
        running = [t for t in running if not t.done()]
        wait = RECANCEL_S
    for task in every:
        if task.done() and not task.cancelled():
            task.exception()  # retrieved: no "never retrieved" warning
    for task in running:
        name = task.get_name() if isinstance(task, asyncio.Task) else repr(task)
        log.error("task ignored cancellation", extra={"task": name, "waited_s": timeout})
    return running


__all__ = ["RECANCEL_S", "RECANCEL_WINDOW_S", "STOP_WAIT_S", "cancel_and_wait",
           "raise_if_cancelled", "within"]
