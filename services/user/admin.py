"""The admin account, made by the user service itself on first start.

The role is granted here and nowhere else: no RPC takes roles as input, so a client can
never ask for one. The password is `SHOP_ADMIN_PASSWORD` when set; otherwise a random one
kept in `<data dir>/admin-password` (mode 0600). That file is created exclusively (written
to a private temp file, then hard-linked to its name), so instances racing on first start
all use the one password that won, and the unique email index lets one of them insert.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from services.common.errors import AlreadyExists, InvalidArgument
from services.user import domain
from services.user.store import UserRepository

log = logging.getLogger("shop.user.admin")

PASSWORD_FILE = "admin-password"

Hasher = Callable[[str], Awaitable[str]]


def password_file(data_dir: Path) -> Path:
    return data_dir / PASSWORD_FILE


def _write_exclusive(path: Path, text: str) -> bool:
    """Write `text` to `path` (mode 0600) unless it exists; False when it did."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text + "\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # atomic and exclusive: no reader sees half a password
        except FileExistsError:
            return False
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def admin_password(data_dir: Path, given: str = "") -> tuple[str, str]:
    """(password, where it came from) for the admin account: `given`
    (SHOP_ADMIN_PASSWORD), else the one in the data dir's file (made on first use)."""
    if given:
        try:
            domain.check_password_rules(given)
        except InvalidArgument as err:
            raise ValueError(f"SHOP_ADMIN_PASSWORD: {err}") from None
        return given, "SHOP_ADMIN_PASSWORD"
    path = password_file(data_dir)
    if not path.exists():
        _write_exclusive(path, secrets.token_urlsafe(18))
    password = path.read_text().strip()
    domain.check_password_rules(password)
    return password, str(path)


@dataclass(frozen=True)
class NewAdmin:
    """The admin account still to be made: its user and password, and where the password
    came from."""

    user: domain.User
    password: str
    source: str


async def admin_to_create(store: UserRepository, data_dir: Path, *,
                          given: str = "") -> NewAdmin | None:
    """The admin account to make (its password chosen, and kept in the data dir's file
    unless given), or None when admin@shop.local exists.

    An existing account of that email that lacks the role is left as it is (and said so):
    it was registered by someone, and the role is never granted after the fact."""
    found = await store.credentials(domain.ADMIN_EMAIL)
    if found is not None:
        if domain.ADMIN_ROLE not in found[0].roles:
            log.warning("the admin account exists without the admin role; not granting it",
                        extra={"email": domain.ADMIN_EMAIL})
        return None
    password, source = admin_password(data_dir, given)
    user = domain.User(id=uuid.uuid4().hex, email=domain.ADMIN_EMAIL, name=domain.ADMIN_NAME,
                       create_time=time.time(), roles=(domain.ADMIN_ROLE,))
    return NewAdmin(user, password, source)


async def create_admin(store: UserRepository, new: NewAdmin, hash_password: Hasher) -> None:
    """Hash the password (one scrypt) and insert the account; another instance that made
    it first (with the same password) wins."""
    try:
        await store.create(new.user, await hash_password(new.password))
    except AlreadyExists:
        return
    log.info("created the admin account", extra={"email": domain.ADMIN_EMAIL,
                                                 "password_from": new.source})

