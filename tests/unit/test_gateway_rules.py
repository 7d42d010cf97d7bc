"""Reading google.api.http rules from descriptors, parsing templates, matching paths."""

from __future__ import annotations

import pytest
from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor_pb2, descriptor_pool

from gateway.router import Router
from gateway.rules import RuleError, load_rules, parse_template, rules_of_file


def test_every_annotated_rpc_of_shop_becomes_a_rule() -> None:
    rules = {r.key: r for r in load_rules()}
    assert rules["POST /api/orders"].rpc == "CreateOrder"
    assert rules["POST /api/orders"].body == "*"
    assert rules["POST /api/orders"].response_body == "order"
    assert rules["GET /api/notifications:countUnread"].service == "notification"
    assert rules["DELETE /api/cart/items/{product_id}"].rpc == "RemoveItem"
    assert rules["GET /api/orders/{order_id}/shipment"].service == "shipping"
    # Unannotated RPCs (Charge, ReserveStock, ...) are not exposed.
    assert not any(r.rpc in ("Charge", "ReserveStock", "SetStock") for r in rules.values())


@pytest.mark.parametrize(
    ("template", "path", "params"),
    [
        ("/api/orders/{id}", "/api/orders/abc", {"id": "abc"}),
        ("/api/orders/{id}/cancel", "/api/orders/o-1/cancel", {"id": "o-1"}),
        ("/v1/{shelf.name}/books", "/v1/s1/books", {"shelf.name": "s1"}),
        ("/v1/{name=shelves/*}", "/v1/shelves/7", {"name": "shelves/7"}),
        ("/v1/{name=files/**}", "/v1/files/a/b/c", {"name": "files/a/b/c"}),
        ("/v1/*/x", "/v1/any/x", {}),
        ("/api/notifications:countUnread", "/api/notifications:countUnread", {}),
        ("/v1/{id}:undelete", "/v1/42:undelete", {"id": "42"}),
    ],
)
def test_template_matches(template: str, path: str, params: dict[str, str]) -> None:
    t = parse_template(template)
    router: Router[str] = Router([("GET", t, "target")])
    match = router.match("GET", path)
    assert match is not None
    assert match.target == "target"
    assert match.params == params


@pytest.mark.parametrize(
    ("template", "path"),
    [
        ("/api/orders/{id}", "/api/orders"),
        ("/api/orders/{id}", "/api/orders/a/b"),
        ("/api/orders/{id}", "/api/orders/"),
        ("/v1/{name=shelves/*}", "/v1/books/7"),
        ("/v1/{id}:undelete", "/v1/42"),
    ],
)
def test_template_does_not_match(template: str, path: str) -> None:
    router: Router[str] = Router([("GET", parse_template(template), "x")])
    assert router.match("GET", path) is None


@pytest.mark.parametrize(
    "bad", ["api/x", "/api/{id", "/api/{id}}", "/a//b", "/{a-b}", "/a/**/b", "/{x={y}}"]
)
def test_bad_templates_are_refused(bad: str) -> None:
    with pytest.raises(RuleError):
        parse_template(bad)


def test_router_prefers_verb_and_literals_and_checks_method() -> None:
    router: Router[str] = Router(
        [
            ("GET", parse_template("/api/products/{id}"), "get"),
            ("GET", parse_template("/api/products:batchGet"), "batch"),
            ("GET", parse_template("/api/orders/{id}"), "order"),
            ("GET", parse_template("/api/orders/{id}/shipment"), "shipment"),
            ("GET", parse_template("/api/orders/{a}/{b}"), "two"),
            ("GET", parse_template("/api/orders/{order_id}/saga"), "saga"),
            ("DELETE", parse_template("/api/orders/{id}"), "delete"),
        ]
    )
    assert router.match("GET", "/api/products:batchGet").target == "batch"  # type: ignore[union-attr]
    assert router.match("GET", "/api/products/p1").target == "get"  # type: ignore[union-attr]
    assert router.match("GET", "/api/orders/o1/shipment").target == "shipment"  # type: ignore[union-attr]
    assert router.match("GET", "/api/orders/o1/saga").target == "saga"  # type: ignore[union-attr]
    assert router.match("GET", "/api/orders/o1/zzz").target == "two"  # type: ignore[union-attr]
    assert router.match("POST", "/api/orders/o1") is None
    assert router.allowed_methods("/api/orders/o1") == ["DELETE", "GET"]
    assert router.allowed_methods("/api/products:batchGet") == ["GET"]
    assert router.allowed_methods("/api/nothing") == []


def _synthetic_file() -> descriptor_pb2.FileDescriptorProto:
    """A small contract using what shop's own protos do not: additional_bindings, a body
    field, a nested path variable."""
    f = descriptor_pb2.FileDescriptorProto(
        name="test/library.proto", package="test.library.v1", syntax="proto3"
    )
    shelf = f.message_type.add(name="Shelf")
    shelf.field.add(name="name", number=1, type=9, label=1, json_name="name")
    book = f.message_type.add(name="Book")
    book.field.add(name="title", number=1, type=9, label=1, json_name="title")
    req = f.message_type.add(name="CreateBookRequest")
    req.field.add(
        name="shelf",
        number=1,
        type=11,
        label=1,
        type_name=".test.library.v1.Shelf",
        json_name="shelf",
    )
    req.field.add(
        name="book",
        number=2,
        type=11,
        label=1,
        type_name=".test.library.v1.Book",
        json_name="book",
    )
    svc = f.service.add(name="LibraryService")
    method = svc.method.add(
        name="CreateBook",
        input_type=".test.library.v1.CreateBookRequest",
        output_type=".test.library.v1.Book",
    )
    rule = http_pb2.HttpRule(post="/v1/shelves/{shelf.name}/books", body="book")
    rule.additional_bindings.add(put="/v1/books/{shelf.name}", body="*")
    method.options.Extensions[annotations_pb2.http].CopyFrom(rule)
    return f


def test_additional_bindings_body_field_and_nested_variables() -> None:
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(_synthetic_file().SerializeToString())
    fd = pool.FindFileByName("test/library.proto")
    rules = list(rules_of_file("library", fd))
    assert [(r.http_method, r.template.raw, r.additional) for r in rules] == [
        ("POST", "/v1/shelves/{shelf.name}/books", False),
        ("PUT", "/v1/books/{shelf.name}", True),
    ]
    main = rules[0]
    assert main.body == "book"
    (var, path) = main.path_fields[0]
    assert var.name == "shelf.name"
    assert [f.name for f in path] == ["shelf", "name"]


def test_unknown_path_field_is_refused() -> None:
    f = _synthetic_file()
    opts = f.service[0].method[0].options
    opts.Extensions[annotations_pb2.http].post = "/v1/{nope}/books"
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(f.SerializeToString())
    with pytest.raises(RuleError):
        list(rules_of_file("library", pool.FindFileByName("test/library.proto")))
