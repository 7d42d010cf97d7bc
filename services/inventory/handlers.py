"""Inventory consumes no events: the saga calls it over gRPC. Its events (inventory.reserved,
inventory.released) leave through the outbox; this module keeps the service's usual shape."""

from __future__ import annotations

from services.common.consumer import Route


def routes() -> list[Route]:
    return []
