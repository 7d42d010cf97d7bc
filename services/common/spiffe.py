"""The mesh's names: each identity's SPIFFE id (the one URI SAN of its certificate, what
the call policy reads) and DNS SAN (what a client checks a server against, and what NATS
maps users by).

Kept apart from `pki.py`, which makes certificates: a running service only reads names,
and must not pay for the X.509 library (about 8 MB and its import time per process)."""

from __future__ import annotations

from services.common.settings import SERVICES

__all__ = ["BACKOFFICE", "GATEWAY", "IDENTITIES", "NATS", "OPERATOR", "TRUST_DOMAIN",
           "dns_name", "identity_of_spiffe", "spiffe_id"]

TRUST_DOMAIN = "shop.local"
GATEWAY = "gateway"
OPERATOR = "operator"  # grpcurl and shopctl
BACKOFFICE = "backoffice"  # catalogue and stock management (CreateProduct, SetStock)
NATS = "nats"  # the nats-server's own certificate
IDENTITIES: tuple[str, ...] = (*SERVICES, GATEWAY, OPERATOR, BACKOFFICE, NATS)


def spiffe_id(identity: str) -> str:
    return f"spiffe://{TRUST_DOMAIN}/{identity}"


def dns_name(identity: str) -> str:
    """The DNS SAN of `identity`'s certificate; clients check servers against it."""
    return f"{identity}.{TRUST_DOMAIN}"


def identity_of_spiffe(uri: str) -> str | None:
    """`spiffe://shop.local/order` -> "order"; None for another trust domain or shape."""
    prefix = f"spiffe://{TRUST_DOMAIN}/"
    if not uri.startswith(prefix):
        return None
    rest = uri[len(prefix):]
    return rest if rest and "/" not in rest else None
