"""Which requests may go on: the rate limits, in the order the gateway applies them.

- `anonymous(addr)`: every request not yet known to come from a user (no token, or one
  not verified recently) is counted per client address *before* its token is checked,
  so a flood of bad tokens is answered 429, not an endless stream of 401s.
- `user(user_id)`: a caller with a valid token is counted as that user.
- `login_address(addr)` / `login_email(email)`: POST /api/auth/login has stricter limits
  of its own, per client address and per email, since every attempt costs the user
  service an scrypt hash and could be a password guess.

Each is a `RateLimiter` (fixed window per identity); a refusal is an HttpError 429 with
Retry-After.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.errors import HttpError
from gateway.ratelimit import RateLimiter


def _refuse(what: str, headers: list[tuple[bytes, bytes]]) -> HttpError:
    return HttpError(429, "RESOURCE_EXHAUSTED", f"rate limit exceeded ({what})", headers=headers)


@dataclass(frozen=True)
class Admission:
    users: RateLimiter
    addresses: RateLimiter
    logins_by_address: RateLimiter
    logins_by_email: RateLimiter

    @classmethod
    def of(cls, *, user: str, anonymous: str, login: str, login_email: str) -> Admission:
        return cls(
            RateLimiter(user), RateLimiter(anonymous), RateLimiter(login), RateLimiter(login_email)
        )

    def anonymous(self, addr: str) -> None:
        limited = self.addresses.check(addr)
        if limited is not None:
            raise _refuse("per client address", limited)

    def user(self, user_id: str) -> None:
        limited = self.users.check(user_id)
        if limited is not None:
            raise _refuse("per user", limited)

    def login_address(self, addr: str) -> None:
        limited = self.logins_by_address.check(addr)
        if limited is not None:
            raise _refuse("logins per client address", limited)

    def login_email(self, email: str) -> None:
        # As the user service looks it up: case and surrounding spaces do not make a
        # new identity.
        limited = self.logins_by_email.check(email.strip().lower())
        if limited is not None:
            raise _refuse("logins per email", limited)
