"""The stock ledger's own check, for tests that judge a settled system: what
`shopctl inventory rebuild --verify --from-scratch` reports, over gRPC as the operator."""

from __future__ import annotations

from shop.inventory.v1 import inventory_pb2, inventory_pb2_grpc

from tests.support import mesh

__all__ = ["ledger_differences"]


async def ledger_differences(inventory_addr: str, *, timeout_s: float = 120.0) -> list[str]:
    """Each product whose stock row differs from the replay of its events (or whose
    snapshots do), in words; empty when the ledger and the rows agree."""
    async with mesh.channel(inventory_addr) as channel:
        reply = await inventory_pb2_grpc.InventoryServiceStub(channel).RebuildStock(
            inventory_pb2.RebuildStockRequest(verify_only=True, from_scratch=True),
            timeout=timeout_s)
    assert reply.products > 0, "the ledger holds no product"
    return [f"{d.product_id}: {d.problem}" for d in reply.differences]
