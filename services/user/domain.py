"""User rules: registration input, email normalization, password hashing and checking.

Pure (stdlib only). Hashing is CPU-bound (tens of ms by design): callers run
`hash_password` / `verify_password` in a thread so the event loop keeps serving.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from services.common.errors import InvalidArgument, Unauthenticated

MAX_EMAIL_LEN = 254  # RFC 5321 path limit
MAX_NAME_LEN = 100
MIN_PASSWORD_LEN = 8
# scrypt reads the whole password; a cap keeps one request from costing much more.
MAX_PASSWORD_LEN = 1024
MAX_ID_LEN = 128

# Deliberately simple: one @, no spaces, a dot in the domain, no empty labels.
_EMAIL = re.compile(
    r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$"
)

# OWASP's minimum for scrypt; 16 MiB of memory per hash (128 * n * r).
SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
SALT_BYTES = 16
HASH_BYTES = 32
_SCHEME = "scrypt"

LOGIN_FAILED = "invalid email or password"

# The one role shop knows: may open the operator console and call /api/admin/*.
ADMIN_ROLE = "admin"
# The account the user service creates on first start (see services/user/admin.py).
ADMIN_EMAIL = "admin@shop.local"
ADMIN_NAME = "Shop Admin"


@dataclass(frozen=True, slots=True)
class Registration:
    """A validated CreateUser request; the password is still plain text here."""

    email: str
    name: str
    password: str


@dataclass(frozen=True, slots=True)
class User:
    id: str
    email: str
    name: str
    create_time: float  # unix seconds
    roles: tuple[str, ...] = ()


def normalize_email(raw: str) -> str:
    """Trimmed and lowercased; InvalidArgument when it does not look like an email."""
    email = raw.strip().lower()
    if not email:
        raise InvalidArgument("email is required")
    if len(email) > MAX_EMAIL_LEN:
        raise InvalidArgument(f"email is longer than {MAX_EMAIL_LEN} characters")
    if not _EMAIL.fullmatch(email):
        raise InvalidArgument("email is not a valid address")
    return email


def normalize_name(raw: str) -> str:
    name = " ".join(raw.split())  # also folds inner runs of whitespace and newlines
    if not name:
        raise InvalidArgument("name is required")
    if len(name) > MAX_NAME_LEN:
        raise InvalidArgument(f"name is longer than {MAX_NAME_LEN} characters")
    return name


def check_password_rules(password: str) -> None:
    if len(password) < MIN_PASSWORD_LEN:
        raise InvalidArgument(f"password must be at least {MIN_PASSWORD_LEN} characters")
    if len(password) > MAX_PASSWORD_LEN:
        raise InvalidArgument(f"password is longer than {MAX_PASSWORD_LEN} characters")


def validate_registration(email: str, name: str, password: str) -> Registration:
    """Checks in field order, so the message names the first bad field."""
    clean_email = normalize_email(email)
    clean_name = normalize_name(name)
    check_password_rules(password)
    return Registration(email=clean_email, name=clean_name, password=password)


def validate_login(email: str, password: str) -> tuple[str, str]:
    """(lookup email, password). A malformed email is just a failed login: the answer
    must not tell a caller which emails could exist."""
    if not email.strip() or not password:
        raise InvalidArgument("email and password are required")
    if len(password) > MAX_PASSWORD_LEN:
        raise Unauthenticated(LOGIN_FAILED)
    return email.strip().lower(), password


def validate_user_id(user_id: str) -> str:
    if not user_id:
        raise InvalidArgument("id is required")
    if len(user_id) > MAX_ID_LEN:
        raise InvalidArgument(f"id is longer than {MAX_ID_LEN} characters")
    return user_id


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int, dklen: int) -> bytes:
    # maxmem above the 128*n*r need; the default (32 MiB) would be too tight for n=2**15.
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p,
                          dklen=dklen, maxmem=256 * 1024 * 1024)


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """`scrypt$n$r$p$salt$hash` (base64): the parameters travel with the hash, so they can
    be raised later without breaking existing users."""
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    digest = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P, HASH_BYTES)
    return f"{_SCHEME}${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, encoded: str) -> bool:
    """Constant-time check; False (never an exception) for a malformed stored hash."""
    try:
        scheme, n, r, p, salt_b64, hash_b64 = encoded.split("$")
        if scheme != _SCHEME:
            return False
        salt = base64.b64decode(salt_b64, validate=True)
        expected = base64.b64decode(hash_b64, validate=True)
        got = _scrypt(password, salt, int(n), int(r), int(p), len(expected))
    except ValueError:
        return False
    return hmac.compare_digest(got, expected)


@functools.cache
def dummy_hash() -> str:
    """A hash to check against when the email is unknown, so that answer costs as much
    time as a wrong password (no timing oracle for which emails are registered)."""
    return hash_password(secrets.token_urlsafe(16))
