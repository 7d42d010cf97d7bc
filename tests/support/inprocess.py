"""Run the echo app inside the test's own loop (port 0) and always stop it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from services.common.server import ServiceRunner
from tests.support.echo_app import EchoProductServicer, make_app
from tests.support.mesh import settings_for


@dataclass
class RunningEcho:
    runner: ServiceRunner
    servicer: EchoProductServicer

    @property
    def addr(self) -> str:
        return self.runner.addr


@asynccontextmanager
async def running_echo(tmp: Path, *, slow_s: float = 1.0) -> AsyncIterator[RunningEcho]:
    servicer = EchoProductServicer(slow_s)
    settings = settings_for("echo", port=0, data_dir=tmp, instance_id="echo-test", grace_s=1)
    runner = ServiceRunner(settings, make_app(servicer))
    await runner.start()
    try:
        yield RunningEcho(runner, servicer)
    finally:
        await runner.stop(grace_s=0.5)
