"""The payment service consumes no events: the order saga calls it over gRPC."""

from __future__ import annotations

from services.common.consumer import Route


def routes() -> list[Route]:
    return []
