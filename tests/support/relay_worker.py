"""A relay process for fault tests: drains an outbox file to NATS, then exits 0.

usage: python -m tests.support.relay_worker DB_PATH_OR_POSTGRESQL_URL NATS_URL [BATCH]
Prints "ready" once connected, "drained" when no unsent row is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys

from services.common.bus import Bus
from services.common.db import Database
from services.common.eventing import make_relay
from services.common.pg import PgDatabase
from services.common.schema import COMMON
from services.common.storage import Storage
from tests.support.mesh import nats_auth


async def main(where: str, url: str, batch: int) -> None:
    db: Storage = (await PgDatabase.open(where, migrations=[COMMON])
                   if where.startswith("postgresql://")
                   else await Database.open(where, durable=True))
    # As the operator: a stand-in relaying any test event.
    bus = await Bus.connect(url, name="relay-worker", auth=nats_auth())
    await bus.ensure_streams()
    relay = make_relay(db, bus, batch=batch, poll_s=0.05)
    print("ready", flush=True)
    task = asyncio.create_task(relay.run())
    try:
        while True:
            if not await relay.pending():
                break
            await asyncio.sleep(0.01)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    print("drained", relay.stats.published, flush=True)
    await bus.close()
    await db.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 256))
