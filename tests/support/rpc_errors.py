"""Asserting a gRPC call's error answer."""

from __future__ import annotations

from collections.abc import Awaitable

import grpc
import pytest
from grpc import aio


async def expect_error(call: Awaitable[object], code: grpc.StatusCode, *fragments: str) -> str:
    """Await `call`, which must fail with `code` and a message holding every fragment;
    the message, for further checks."""
    with pytest.raises(aio.AioRpcError) as info:
        await call
    details = info.value.details() or ""
    assert info.value.code() == code, f"{info.value.code()}: {details}"
    for fragment in fragments:
        assert fragment in details, details
    return details
