"""One process lifecycle for the services and the gateway: each part is started in
order and pushes how to stop it; `stop()` runs those in reverse order of start.

    life = Lifecycle()
    link.start();            life.push("registry link", link.close)
    await disc.start(2.0);   life.push("discovery", disc.stop)
    ...                      # the app's resources, its tasks, the server
    registration.start();    life.push("registration", registration_stop)
    ...
    await life.stop()        # registration, server, tasks, resources, discovery, link

A start that fails half-way stops what it had started (`async with life:` does it too).
A stop hook that fails is logged and the others still run.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from types import TracebackType

log = logging.getLogger("shop.lifecycle")

Stop = Callable[[], Awaitable[object]]


class Lifecycle:
    def __init__(self) -> None:
        self._stops: list[tuple[str, Stop]] = []

    def push(self, name: str, stop: Stop) -> None:
        """`name` has started; `stop` undoes it (run before everything started earlier)."""
        self._stops.append((name, stop))

    @property
    def started(self) -> list[str]:
        """What is running, in the order it started."""
        return [name for name, _ in self._stops]

    async def stop(self) -> None:
        """Stop everything, last started first; idempotent."""
        while self._stops:
            name, stop = self._stops.pop()
            try:
                await stop()
            except Exception:
                log.exception("stop hook failed", extra={"part": name})

    async def __aenter__(self) -> Lifecycle:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.stop()


def advertised(host: str, port: int, advertise_host: str = "") -> str:
    """The address other processes reach this one at: `advertise_host`
    (SHOP_ADVERTISE_HOST: a pod IP, ...) or the listen host, a wildcard one as 127.0.0.1."""
    host = advertise_host or host
    if host in ("", "0.0.0.0", "::", "[::]"):
        host = "127.0.0.1"
    return f"{host}:{port}"
