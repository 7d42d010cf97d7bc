"""Domain errors map to the right gRPC codes, on the wire too."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from grpc import aio
from shop.product.v1 import product_pb2, product_pb2_grpc

from services.common import errors
from services.common.interceptors import status_of
from tests.support import mesh
from tests.support.inprocess import running_echo

EXPECTED = {
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
}


@pytest.mark.parametrize(("kind", "code"), list(EXPECTED.items()))
def test_each_kind_maps_to_its_status(
    kind: type[errors.DomainError], code: grpc.StatusCode
) -> None:
    err = kind("why")
    assert isinstance(err, errors.DomainError)
    assert str(err) == "why"
    assert status_of(err) is code


def test_every_kind_is_listed() -> None:
    assert set(errors.ALL_KINDS) == set(EXPECTED)


async def _get(addr: str, pid: str) -> aio.AioRpcError:
    async with mesh.channel(addr) as channel:
        stub = product_pb2_grpc.ProductServiceStub(channel)
        with pytest.raises(aio.AioRpcError) as info:
            await stub.GetProduct(product_pb2.GetProductRequest(id=pid), timeout=5)
    return info.value


async def test_interceptor_maps_domain_error_and_bug(tmp_path: Path) -> None:
    async with running_echo(tmp_path) as echo:
        missing = await _get(echo.addr, "missing")
        assert missing.code() is grpc.StatusCode.NOT_FOUND
        assert missing.details() == "product missing not found"
        bug = await _get(echo.addr, "boom")
        assert bug.code() is grpc.StatusCode.INTERNAL
        # The traceback goes to the log, not to the caller.
        assert "scripted bug" not in (bug.details() or "")


async def test_downstream_code_passes_through(tmp_path: Path) -> None:
    async with running_echo(tmp_path / "a") as back, running_echo(tmp_path / "b") as front:
        # The front's calls to "product" pinned to the back (PRODUCT_ADDR, as read at start).
        front.servicer.wiring = mesh.process_wiring(pinned={"product": back.addr})
        err = await _get(front.addr, "forward:missing")
        assert err.code() is grpc.StatusCode.NOT_FOUND
        assert err.details() == "product missing not found"
        assert back.servicer.calls == 1
