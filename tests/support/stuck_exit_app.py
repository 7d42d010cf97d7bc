"""The echo app with a leftover non-daemon thread that never ends: without a bound on the
exit, the process would log "stopped" and then never exit (the interpreter joins it)."""

from __future__ import annotations

import threading

from services.common.server import App, run_service
from services.common.settings import Settings
from services.common.wiring import Wiring
from tests.support.echo_app import build as echo_build


async def build(settings: Settings, wiring: Wiring) -> App:
    never = threading.Event()
    threading.Thread(target=never.wait, name="leftover-worker", daemon=False).start()
    return await echo_build(settings, wiring)


def main() -> None:
    run_service("echo", build)


if __name__ == "__main__":
    main()
