"""Which routes are open to anonymous callers; every other /api route needs a bearer token."""

from __future__ import annotations

# Exact (method, template) pairs that are open.
_OPEN_EXACT = frozenset(
    {
        ("POST", "/api/users"),
        ("POST", "/api/auth/login"),
        ("GET", "/api/auth/jwks"),
    }
)
# Open by template prefix: the catalogue and stock levels are public reads.
_OPEN_PREFIXES = (("GET", "/api/products"), ("GET", "/api/inventory/"))


def is_public(method: str, template: str) -> bool:
    if (method, template) in _OPEN_EXACT:
        return True
    return any(method == m and template.startswith(p) for m, p in _OPEN_PREFIXES)
