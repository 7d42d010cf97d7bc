"""The call policy file: complete, well-formed, default deny."""

from __future__ import annotations

import importlib

import pytest

from services.common.policy import PolicyError, load_policy, parse_policy
from services.common.settings import SERVICES
from services.common.spiffe import IDENTITIES
from services.common.tls import ANONYMOUS


def _all_rpcs() -> set[str]:
    out: set[str] = set()
    for svc in SERVICES:
        module = importlib.import_module(f"shop.{svc}.v1.{svc}_pb2")
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                out.add(f"/{service.full_name}/{method.name}")
    return out


def test_every_rpc_is_named_and_every_name_is_an_rpc() -> None:
    """A new RPC without a policy line would be denied to everyone: this says so first."""
    rules = load_policy().rules
    shop_rules = {m for m in rules if m.startswith("/shop.")}
    assert _all_rpcs() - shop_rules == set(), "RPCs without a policy line"
    assert shop_rules - _all_rpcs() == set(), "policy lines naming no RPC"


def test_only_known_identities_and_anonymous_only_for_health() -> None:
    rules = load_policy().rules
    for method, allowed in rules.items():
        assert allowed <= {*IDENTITIES, ANONYMOUS}, method
        if ANONYMOUS in allowed:
            assert method.startswith("/grpc.health.v1.Health/"), method


def test_what_was_exposed_is_now_narrow() -> None:
    p = load_policy()
    assert p.allowed("/shop.order.v1.OrderService/ListOrders") == {"gateway"}
    assert p.allowed("/shop.payment.v1.PaymentService/Refund") == {"order"}
    assert p.allowed("/shop.inventory.v1.InventoryService/ReserveStock") == {"order"}
    assert p.allowed("/shop.inventory.v1.InventoryService/SetStock") == {"backoffice"}
    assert p.allowed("/shop.product.v1.ProductService/CreateProduct") == {"backoffice"}
    # the operator: health, reflection, saga histories and retries, the stock rebuild;
    # nothing else
    operator = {m for m, who in p.rules.items() if "operator" in who}
    assert operator == {
        "/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        "/shop.order.v1.OrderService/GetSagaHistory",
        "/shop.order.v1.OrderService/RetrySaga",
        "/shop.inventory.v1.InventoryService/RebuildStock",
    }
    assert p.allowed("/shop.inventory.v1.InventoryService/RebuildStock") == {"operator"}


def test_unlisted_is_denied() -> None:
    p = parse_policy('[groups]\n[calls]\n"a.B/C" = ["x"]\n')
    assert p.permits("x", "/a.B/C")
    assert not p.permits("y", "/a.B/C")
    assert not p.permits("x", "/a.B/D")


def test_groups_expand_and_bad_files_are_refused() -> None:
    p = parse_policy('[groups]\nab = ["a", "b"]\nall = ["@ab", "c"]\n'
                     '[calls]\n"p.S/M" = ["@all"]\n')
    assert p.allowed("/p.S/M") == {"a", "b", "c"}
    with pytest.raises(PolicyError, match="unknown group"):
        parse_policy('[groups]\n[calls]\n"p.S/M" = ["@nope"]\n')
    with pytest.raises(PolicyError, match="want"):
        parse_policy('[groups]\n[calls]\n"nomethod" = ["a"]\n')
    with pytest.raises(PolicyError, match="contains itself"):
        parse_policy('[groups]\ng = ["@g"]\n[calls]\n"p.S/M" = ["@g"]\n')
