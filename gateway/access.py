"""Which routes are open to anonymous callers; every other /api route needs a bearer token."""

from __future__ import annotations

# Exact (method, template) pairs that are open.
_OPEN_EXACT = frozenset(
    {
        ("POST", "/api/users"),
        ("POST", "/api/auth/login"),
        ("GET", "/api/auth/jwks"),
        # Stock levels (now or at a past time) are public reads; a product's stock history
        # names the orders that moved it, so it needs a signed-in caller.
        ("GET", "/api/inventory/{product_id}"),
    }
)
# Open by template prefix: the catalogue is a public read.
_OPEN_PREFIXES = (("GET", "/api/products"),)


def is_public(method: str, template: str) -> bool:
    if (method, template) in _OPEN_EXACT:
        return True
    return any(method == m and template.startswith(p) for m, p in _OPEN_PREFIXES)
