"""The product service as a real process over real gRPC: catalogue reads, paging, creation.

No NATS is started here on purpose: the product service must not need it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest
import pytest_asyncio
from shop.product.v1 import product_pb2, product_pb2_grpc

from ops.process import ServiceProcess, free_port
from services.common.demo import CATALOGUE as DEMO
from tests.fixtures_services import TEST_ENV, ServiceFactory
from tests.fixtures_storage import Query, both_backends
from tests.support import mesh
from tests.support.rpc_errors import expect_error

pytestmark = pytest.mark.timeout(120)

DEMO_IDS = {p.id for p in DEMO}
if TYPE_CHECKING:  # on an aio channel the stub is the .pyi's async one
    Stub = product_pb2_grpc.ProductServiceAsyncStub
else:
    Stub = product_pb2_grpc.ProductServiceStub


def _no_nats() -> str:
    return f"nats://127.0.0.1:{free_port()}"  # nothing listens there


def _start(data_dir: Path, db_env: dict[str, str] | None = None) -> ServiceProcess:
    return ServiceProcess("product", data_dir=data_dir, nats_url=_no_nats(),
                          env={**TEST_ENV, **(db_env or {})}).start().wait_ready(60)


@pytest.fixture(scope="module")
def catalogue_proc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    """Read-only tests share this one: its catalogue is exactly the demo one."""
    proc = _start(tmp_path_factory.mktemp("product-ro"))
    try:
        yield proc
    finally:
        proc.terminate()


@pytest.fixture(scope="module")
def writable_proc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    proc = _start(tmp_path_factory.mktemp("product-rw"))
    try:
        yield proc
    finally:
        proc.terminate()


@pytest_asyncio.fixture
async def stub(catalogue_proc: ServiceProcess) -> AsyncIterator[Stub]:
    async with mesh.channel(catalogue_proc.addr) as channel:
        yield Stub(channel)


@pytest_asyncio.fixture
async def wstub(writable_proc: ServiceProcess) -> AsyncIterator[Stub]:
    async with mesh.channel(writable_proc.addr) as channel:
        yield Stub(channel)


def row_count(proc: ServiceProcess) -> int:
    conn = sqlite3.connect(f"file:{proc.data_dir / 'product.db'}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT count(*) FROM products").fetchone()[0])
    finally:
        conn.close()


async def walk(stub: Stub, page_size: int, query: str = "",
               category: str = "") -> list[product_pb2.Product]:
    out: list[product_pb2.Product] = []
    token = ""
    for _ in range(200):
        resp = await stub.ListProducts(product_pb2.ListProductsRequest(
            page_size=page_size, page_token=token, query=query, category=category), timeout=5)
        assert len(resp.products) <= page_size
        out += resp.products
        token = resp.next_page_token
        if not token:
            return out
    raise AssertionError("pagination did not end")


async def test_get_demo_product(stub: Stub) -> None:
    p = (await stub.GetProduct(product_pb2.GetProductRequest(id="espresso-machine"),
                               timeout=5)).product
    assert (p.id, p.name, p.category, p.price_cents, p.currency) == (
        "espresso-machine", "Espresso Machine", "kitchen", 24900, "USD")


async def test_get_unknown_or_bad_id(stub: Stub) -> None:
    await expect_error(stub.GetProduct(product_pb2.GetProductRequest(id="no-such-thing"),
                                       timeout=5), grpc.StatusCode.NOT_FOUND, "no-such-thing")
    await expect_error(stub.GetProduct(product_pb2.GetProductRequest(id=""), timeout=5),
                       grpc.StatusCode.INVALID_ARGUMENT, "id is required")
    await expect_error(stub.GetProduct(product_pb2.GetProductRequest(id="a/b"), timeout=5),
                       grpc.StatusCode.INVALID_ARGUMENT, "not valid")


async def test_pages_of_five_walk_the_demo_catalogue_once(stub: Stub) -> None:
    first = await stub.ListProducts(product_pb2.ListProductsRequest(page_size=5), timeout=5)
    assert len(first.products) == 5 and first.next_page_token
    products = await walk(stub, 5)
    ids = [p.id for p in products]
    assert len(ids) == 12 and set(ids) == DEMO_IDS
    names = [p.name.casefold() for p in products]
    assert names == sorted(names)


async def test_default_page_size_is_twenty(stub: Stub) -> None:
    resp = await stub.ListProducts(product_pb2.ListProductsRequest(), timeout=5)
    assert len(resp.products) == 12 and resp.next_page_token == ""


async def test_query_and_category(stub: Stub) -> None:
    assert {p.id for p in await walk(stub, 5, query="KEYBOARD")} == {"mechanical-keyboard"}
    assert {p.id for p in await walk(stub, 1, query="books")} == {"novel-dune", "cookbook"}
    assert {p.id for p in await walk(stub, 2, query="steel")} == {"chef-knife",
                                                                 "water-bottle"}
    assert {p.id for p in await walk(stub, 2, query="steel", category="sports")} == {
        "water-bottle"}
    assert len(await walk(stub, 2, category="electronics")) == 3
    assert await walk(stub, 2, query="zzz-nothing") == []


async def test_bad_list_requests(stub: Stub) -> None:
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    await expect_error(stub.ListProducts(product_pb2.ListProductsRequest(page_size=-1),
                                         timeout=5), invalid, "page_size")
    await expect_error(stub.ListProducts(product_pb2.ListProductsRequest(page_token="@@@"),
                                         timeout=5), invalid, "page_token")
    forged = base64.urlsafe_b64encode(json.dumps({"k": 1}).encode()).decode()
    await expect_error(stub.ListProducts(product_pb2.ListProductsRequest(page_token=forged),
                                         timeout=5), invalid, "page_token")
    page = await stub.ListProducts(product_pb2.ListProductsRequest(page_size=1, query="e"),
                                   timeout=5)
    assert page.next_page_token
    await expect_error(stub.ListProducts(product_pb2.ListProductsRequest(
        page_size=1, query="a", page_token=page.next_page_token), timeout=5),
        invalid, "different query")


async def test_batch_get_keeps_order_and_duplicates(stub: Stub) -> None:
    ids = ["yoga-mat", "novel-dune", "yoga-mat", "headphones"]
    resp = await stub.BatchGetProducts(product_pb2.BatchGetProductsRequest(ids=ids), timeout=5)
    assert [p.id for p in resp.products] == ids
    empty = await stub.BatchGetProducts(product_pb2.BatchGetProductsRequest(), timeout=5)
    assert list(empty.products) == []


async def test_batch_get_names_unknown_ids(stub: Stub) -> None:
    await expect_error(stub.BatchGetProducts(product_pb2.BatchGetProductsRequest(
        ids=["yoga-mat", "ghost-1", "ghost-2"]), timeout=5),
        grpc.StatusCode.NOT_FOUND, "ghost-1", "ghost-2")
    await expect_error(stub.BatchGetProducts(product_pb2.BatchGetProductsRequest(
        ids=["yoga-mat"] * 101), timeout=5), grpc.StatusCode.INVALID_ARGUMENT, "at most 100")


async def test_create_product_then_read_it_everywhere(wstub: Stub) -> None:
    new = product_pb2.Product(id="tea-pot", name=" Tea  Pot ", description="1 litre",
                              category="Kitchen", price_cents=1999, currency="eur")
    created = (await wstub.CreateProduct(product_pb2.CreateProductRequest(product=new),
                                         timeout=5)).product
    assert (created.id, created.name, created.category, created.currency) == (
        "tea-pot", "Tea Pot", "kitchen", "EUR")
    got = (await wstub.GetProduct(product_pb2.GetProductRequest(id="tea-pot"),
                                  timeout=5)).product
    assert got == created
    assert "tea-pot" in {p.id for p in await walk(wstub, 5, query="tea")}
    batch = await wstub.BatchGetProducts(
        product_pb2.BatchGetProductsRequest(ids=["tea-pot", "yoga-mat"]), timeout=5)
    assert [p.id for p in batch.products] == ["tea-pot", "yoga-mat"]


async def test_create_product_without_id_gets_one(wstub: Stub) -> None:
    created = (await wstub.CreateProduct(product_pb2.CreateProductRequest(
        product=product_pb2.Product(name="Mug", price_cents=900)), timeout=5)).product
    assert len(created.id) == 32 and created.currency == "USD"
    got = await wstub.GetProduct(product_pb2.GetProductRequest(id=created.id), timeout=5)
    assert got.product.name == "Mug"


@pytest.mark.parametrize(
    ("product", "code", "message"),
    [
        (product_pb2.Product(id="yoga-mat", name="X", price_cents=1),
         grpc.StatusCode.ALREADY_EXISTS, "yoga-mat"),
        (product_pb2.Product(id="p1", name="", price_cents=1),
         grpc.StatusCode.INVALID_ARGUMENT, "name is required"),
        (product_pb2.Product(id="p1", name="X", price_cents=0),
         grpc.StatusCode.INVALID_ARGUMENT, "price_cents must be positive"),
        (product_pb2.Product(id="p1", name="X", price_cents=-5),
         grpc.StatusCode.INVALID_ARGUMENT, "price_cents must be positive"),
        (product_pb2.Product(id="p1", name="X", price_cents=1, currency="dollars"),
         grpc.StatusCode.INVALID_ARGUMENT, "currency"),
        (product_pb2.Product(id="bad id", name="X", price_cents=1),
         grpc.StatusCode.INVALID_ARGUMENT, "not valid"),
        (product_pb2.Product(), grpc.StatusCode.INVALID_ARGUMENT, "name is required"),
    ],
)
async def test_create_product_refusals_write_nothing(
        wstub: Stub, writable_proc: ServiceProcess, product: product_pb2.Product,
        code: grpc.StatusCode, message: str) -> None:
    before = row_count(writable_proc)
    await expect_error(wstub.CreateProduct(product_pb2.CreateProductRequest(product=product),
                                           timeout=5), code, message)
    assert row_count(writable_proc) == before
    if product.id == "yoga-mat":  # the demo product is untouched
        got = await wstub.GetProduct(product_pb2.GetProductRequest(id="yoga-mat"), timeout=5)
        assert got.product.name == "Yoga Mat"


async def test_duplicate_create_is_already_exists(wstub: Stub) -> None:
    req = product_pb2.CreateProductRequest(
        product=product_pb2.Product(id="dup-item", name="Dup", price_cents=100))
    await wstub.CreateProduct(req, timeout=5)
    await expect_error(wstub.CreateProduct(req, timeout=5), grpc.StatusCode.ALREADY_EXISTS,
                       "dup-item")


@both_backends
def test_restart_keeps_created_products_and_seeds_nothing_twice(
        tmp_path: Path, db_env: dict[str, str], query: Query) -> None:
    proc = _start(tmp_path / "data", db_env)
    try:
        with mesh.sync_channel(proc.addr) as channel:
            Stub(channel).CreateProduct(product_pb2.CreateProductRequest(
                product=product_pb2.Product(id="kept", name="Kept", price_cents=5)), timeout=5)
        assert query(proc.data_dir, "product", "SELECT count(*) FROM products") == [13]
        proc.restart(60)
        assert query(proc.data_dir, "product", "SELECT count(*) FROM products") == [13]
        with mesh.sync_channel(proc.addr) as channel:
            sync_stub = product_pb2_grpc.ProductServiceStub(channel)
            listed = sync_stub.ListProducts(product_pb2.ListProductsRequest(page_size=100),
                                            timeout=5)
        assert sorted(p.id for p in listed.products) == sorted([*DEMO_IDS, "kept"])
    finally:
        proc.terminate()


@both_backends
async def test_instances_sharing_a_database_see_each_others_products(
        tmp_path: Path, db_env: dict[str, str]) -> None:
    factory = ServiceFactory(tmp_path / "data", _no_nats(), db_env)
    try:
        a, b = factory.start_many("product", "product", PRODUCT_REFRESH_S="0.2")
        async with mesh.channel(a.addr) as ca, mesh.channel(b.addr) as cb:
            await Stub(ca).CreateProduct(product_pb2.CreateProductRequest(
                product=product_pb2.Product(id="shared", name="Shared", price_cents=5)),
                timeout=5)
            # A miss on B loads what A committed at once.
            got = await Stub(cb).GetProduct(product_pb2.GetProductRequest(id="shared"),
                                            timeout=5)
            assert got.product.name == "Shared"
            await Stub(ca).CreateProduct(product_pb2.CreateProductRequest(
                product=product_pb2.Product(id="listed", name="Listed", price_cents=5)),
                timeout=5)
            deadline = time.monotonic() + 5
            while "listed" not in {p.id for p in await walk(Stub(cb), 50)}:
                assert time.monotonic() < deadline, "B never listed A's product"
                await asyncio.sleep(0.1)
    finally:
        factory.stop_all()
