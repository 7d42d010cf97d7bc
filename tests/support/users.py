"""Creating users in bulk over gRPC, for load and fault tests."""

from __future__ import annotations

import asyncio
import uuid

from shop.user.v1 import user_pb2, user_pb2_grpc

from tests.support import mesh


async def create_users(addr: str, n: int, tag: str) -> list[str]:
    """`n` new users (8 sign-ups in flight); their ids in order."""
    async with mesh.channel(addr) as chan:
        stub = user_pb2_grpc.UserServiceStub(chan)
        sem = asyncio.Semaphore(8)

        async def one(i: int) -> str:
            async with sem:
                reply = await stub.CreateUser(user_pb2.CreateUserRequest(
                    email=f"{tag}-{i}-{uuid.uuid4().hex[:6]}@example.com", name=f"{tag} {i}",
                    password="long enough password"), timeout=20)
                return str(reply.user.id)

        return list(await asyncio.gather(*(one(i) for i in range(n))))
