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

# OWASP's minimum for scrypt (N=2^17, r=8, p=1): 128 MiB of memory per hash (128 * n * r)
# and about 0.1-0.3 s of one core. SHOP_SCRYPT_N lowers N for test runs that sign up many
# users; hashes made then are upgraded at the next login under the full cost.
SCRYPT_N = 2**17
SCRYPT_R = 8
SCRYPT_P = 1
# The cost of the hashes made before N was raised; they still verify.
LEGACY_SCRYPT_N = 2**14
# A stored hash asking for more than this is refused unread (memory: 128 * n * r).
MAX_SCRYPT_N = 2**20
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
class ScryptParams:
    n: int = SCRYPT_N
    r: int = SCRYPT_R
    p: int = SCRYPT_P

    def __post_init__(self) -> None:
        if self.n < 2 or self.n & (self.n - 1) or self.n > MAX_SCRYPT_N:
            raise ValueError(f"scrypt N must be a power of 2 from 2 to 2^20, got {self.n}")
        if not 1 <= self.r <= 64 or not 1 <= self.p <= 16:
            raise ValueError(f"scrypt r and p out of range: r={self.r} p={self.p}")


DEFAULT_SCRYPT = ScryptParams()


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


def _scrypt(password: str, salt: bytes, params: ScryptParams, dklen: int) -> bytes:
    # maxmem above the 128*n*r need (hashlib's default, 32 MiB, is below it for n >= 2^15).
    maxmem = 2 * 128 * params.n * params.r + 16 * 1024 * 1024
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=params.n, r=params.r,
                          p=params.p, dklen=dklen, maxmem=maxmem)


def hash_password(password: str, *, salt: bytes | None = None,
                  params: ScryptParams = DEFAULT_SCRYPT) -> str:
    """`scrypt$n$r$p$salt$hash` (base64): the parameters travel with the hash, so they can
    be raised later without breaking existing users."""
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    digest = _scrypt(password, salt, params, HASH_BYTES)
    return _encode(params, salt, digest)


def _encode(params: ScryptParams, salt: bytes, digest: bytes) -> str:
    """The stored form `_parse` reads back."""
    return f"{_SCHEME}${params.n}${params.r}${params.p}${_b64(salt)}${_b64(digest)}"


def _parse(encoded: str) -> tuple[ScryptParams, bytes, bytes]:
    """(params, salt, digest) of a stored hash; ValueError when it is not one of ours."""
    scheme, n, r, p, salt_b64, hash_b64 = encoded.split("$")
    if scheme != _SCHEME:
        raise ValueError("not an scrypt hash")
    params = ScryptParams(int(n), int(r), int(p))
    salt = base64.b64decode(salt_b64, validate=True)
    digest = base64.b64decode(hash_b64, validate=True)
    if not digest:
        raise ValueError("empty digest")
    return params, salt, digest


def verify_password(password: str, encoded: str) -> bool:
    """Constant-time check under the parameters stored with the hash; False (never an
    exception) for a malformed stored hash."""
    try:
        params, salt, expected = _parse(encoded)
        got = _scrypt(password, salt, params, len(expected))
    except ValueError:
        return False
    return hmac.compare_digest(got, expected)


def needs_rehash(encoded: str, params: ScryptParams = DEFAULT_SCRYPT) -> bool:
    """True when the stored hash costs less than `params` in any parameter (a lower
    setting never downgrades a stronger hash)."""
    try:
        stored = _parse(encoded)[0]
    except ValueError:
        return False
    return stored.n < params.n or stored.r < params.r or stored.p < params.p


@functools.cache
def dummy_hash(params: ScryptParams = DEFAULT_SCRYPT) -> str:
    """A hash to check against when the email is unknown, so that answer costs as much
    time as a wrong password (no timing oracle for which emails are registered). Checking
    runs scrypt under `params` whatever the digest holds, so a random digest costs the
    same as a real one and matches no password; making it costs no scrypt at start."""
    salt, digest = secrets.token_bytes(SALT_BYTES), secrets.token_bytes(HASH_BYTES)
    return _encode(params, salt, digest)
