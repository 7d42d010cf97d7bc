"""Composition root of the user service: `python -m services.user`."""

from __future__ import annotations

import asyncio
import logging
import os
from concurrent.futures import ThreadPoolExecutor

from shop.user.v1 import user_pb2, user_pb2_grpc

from services.common.eventing import EventWorkers
from services.common.schema import service_migrations
from services.common.server import App, run_service
from services.common.settings import Settings
from services.common.storage import open_storage
from services.common.wiring import Wiring
from services.user import domain
from services.user.admin import admin_to_create, create_admin
from services.user.servicer import UserServicer
from services.user.store import UserStore
from services.user.tokens import KeyRing, TokenSettings

SERVICE = user_pb2.DESCRIPTOR.services_by_name["UserService"]

log = logging.getLogger("shop.user")


def scrypt_params(settings: Settings) -> domain.ScryptParams:
    """SHOP_SCRYPT_N (default 2^17, OWASP's minimum): the cost of new password hashes.
    Lower it only for test runs that sign up many users; stored hashes keep their own
    parameters, and those below the setting are re-hashed at their next login."""
    return domain.ScryptParams(n=settings.user.scrypt_n)


async def build(settings: Settings, wiring: Wiring) -> App:
    # Accounts and their events: every commit on disk before CreateUser answers.
    db = await open_storage(settings, service_migrations("user"), durable=True)
    keys = await asyncio.to_thread(
        KeyRing.load_or_create, settings.data_dir / "keys", TokenSettings.of(settings.user)
    )
    scrypt = scrypt_params(settings)
    hasher = ThreadPoolExecutor(max_workers=os.cpu_count() or 2, thread_name_prefix="scrypt")
    # At first start the admin account's password is chosen (and its file written) before
    # serving; its hash (one scrypt, ~0.4 s of CPU while every process starts) is made
    # while serving, and registration and login wait for it.
    store = UserStore(db)
    new_admin = await admin_to_create(store, settings.data_dir,
                                      given=settings.user.admin_password)
    admin_made: asyncio.Future[None] | None = None
    if new_admin is not None:
        admin_made = asyncio.ensure_future(create_admin(
            store, new_admin, lambda pw: asyncio.get_running_loop().run_in_executor(
                hasher, domain.hash_password, pw)))
    servicer = UserServicer(store, keys, hasher, scrypt, accounts_ready=admin_made)
    # The relay starts once NATS answers: registration and login never wait for NATS,
    # events queue up in the outbox meanwhile.
    events = EventWorkers(settings, db, relay=True)

    async def admin_account() -> None:
        """The service fails (and restarts) if the admin account cannot be made."""
        assert admin_made is not None
        await admin_made
        await asyncio.Event().wait()  # then nothing more to do for the life of the process

    async def stop_hasher() -> None:
        hasher.shutdown(wait=False, cancel_futures=True)

    log.info("signing keys loaded", extra={"kids": [k.kid for k in keys.keys]})
    return App.serving(
        SERVICE,
        user_pb2_grpc.add_UserServiceServicer_to_server,
        servicer,
        tasks=[*events.tasks, *([admin_account] if admin_made is not None else [])],
        # The event task (relay, lease handed back) is already cancelled when these run.
        closers=[db.close, *events.on_stop, stop_hasher],
    )


def main() -> None:
    run_service("user", build)


if __name__ == "__main__":
    main()
