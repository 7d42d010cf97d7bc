"""Catalogue rules without I/O: validation, search, pagination tokens, batch lookups."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from services.common.demo import CATALOGUE as DEMO
from services.common.errors import InvalidArgument
from services.product import domain as d


def demo_catalogue() -> d.Catalogue:
    cat = d.Catalogue()
    for p in DEMO:
        assert cat.add(d.Product(p.id, p.name, p.description, p.category, p.price_cents,
                                 p.currency))
    return cat


def new(**over: Any) -> d.Product:
    args: dict[str, Any] = {"product_id": "tea-pot", "name": "Tea Pot", "description": "1 l",
                            "category": "kitchen", "price_cents": 1500, "currency": "USD"}
    args.update(over)
    return d.validate_new_product(**args)


def walk(cat: d.Catalogue, size: int, query: str = "", category: str = "") -> list[str]:
    ids: list[str] = []
    token = ""
    for _ in range(100):
        page, token = cat.page(d.parse_list_request(size, token, query, category))
        assert len(page) <= size
        ids += [p.id for p in page]
        if not token:
            return ids
    raise AssertionError("pagination did not end")


def test_validate_new_product_normalizes() -> None:
    p = new(name="  Tea   Pot ", category=" Kitchen ", currency="eur", description=" x ")
    assert p == d.Product("tea-pot", "Tea Pot", "x", "kitchen", 1500, "EUR")


def test_missing_id_is_generated_and_currency_defaults() -> None:
    p = new(product_id="", currency="", new_id=lambda: "gen-1")
    assert p.id == "gen-1" and p.currency == "USD"
    assert len(new(product_id="").id) == 32  # uuid4 hex by default


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"product_id": "has space"}, "id 'has space' is not valid"),
        ({"product_id": "a/b"}, "is not valid"),
        ({"product_id": "-lead"}, "is not valid"),
        ({"product_id": "x" * 129}, "is not valid"),
        ({"name": "  "}, "name is required"),
        ({"name": "n" * 201}, "name is longer"),
        ({"description": "d" * 2001}, "description is longer"),
        ({"category": "c" * 51}, "category is longer"),
        ({"price_cents": 0}, "price_cents must be positive"),
        ({"price_cents": -1}, "price_cents must be positive"),
        ({"price_cents": 10**11}, "at most"),
        ({"currency": "US"}, "3-letter"),
        ({"currency": "US1"}, "3-letter"),
        ({"currency": "DOLLAR"}, "3-letter"),
    ],
)
def test_validate_new_product_rejects(over: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        new(**over)


@pytest.mark.parametrize(("raw", "size"), [(0, 20), (1, 1), (100, 100), (500, 100)])
def test_page_size(raw: int, size: int) -> None:
    assert d.normalize_page_size(raw) == size


def test_negative_page_size_is_invalid() -> None:
    with pytest.raises(InvalidArgument, match="page_size"):
        d.parse_list_request(-1, "", "", "")


def test_token_round_trip_and_is_opaque_urlsafe() -> None:
    fp = d.query_fingerprint("mug", "")
    token = d.encode_page_token(("dune", "novel-dune"), fp)
    assert all(c.isalnum() or c in "-_" for c in token)
    assert d.decode_page_token(token, fp) == ("dune", "novel-dune")


def test_token_from_another_query_is_refused() -> None:
    token = d.encode_page_token(("a", "b"), d.query_fingerprint("mug", ""))
    with pytest.raises(InvalidArgument, match="different query"):
        d.parse_list_request(5, token, "cup", "")
    with pytest.raises(InvalidArgument, match="different query"):
        d.parse_list_request(5, token, "mug", "books")
    # Same query, different page size: fine (AIP-158 allows changing page_size).
    assert d.parse_list_request(7, token, " MUG ", "").after == ("a", "b")


def _b64(obj: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode()


@pytest.mark.parametrize(
    "token",
    ["%%%", "not-base64!", "YWJj", _b64([1, 2]), _b64({"k": ["a"], "q": "x"}),
     _b64({"k": [1, 2], "q": "x"}), _b64({"k": ["a", "b"]}), "A" * 2000],
)
def test_garbage_tokens_are_invalid(token: str) -> None:
    with pytest.raises(InvalidArgument, match="page_token"):
        d.parse_list_request(5, token, "", "")


def test_walk_all_demo_products_once_in_name_order() -> None:
    cat = demo_catalogue()
    ids = walk(cat, 5)
    assert len(ids) == len(DEMO) == 12
    assert sorted(ids) == sorted(p.id for p in DEMO)
    names = [cat.get(i).name.casefold() for i in ids]  # type: ignore[union-attr]
    assert names == sorted(names)


@pytest.mark.parametrize("size", [1, 3, 5, 11, 12, 13, 100])
def test_every_page_size_covers_all_exactly_once(size: int) -> None:
    ids = walk(demo_catalogue(), size)
    assert len(ids) == len(set(ids)) == 12


def test_exact_fit_has_no_empty_trailing_page() -> None:
    page, token = demo_catalogue().page(d.parse_list_request(12, "", "", ""))
    assert len(page) == 12 and token == ""


def test_query_searches_name_description_category_case_insensitively() -> None:
    cat = demo_catalogue()
    assert set(walk(cat, 2, query="COFFEE")) == {"coffee-grinder"}  # name
    assert set(walk(cat, 2, query="borosilicate")) == {"french-press"}  # description
    assert set(walk(cat, 2, query="Books")) == {"novel-dune", "cookbook"}  # category
    assert walk(cat, 2, query="no such thing") == []


def test_category_filter_is_exact() -> None:
    cat = demo_catalogue()
    assert len(walk(cat, 2, category="sports")) == 3
    assert walk(cat, 2, category="sport") == []
    assert walk(cat, 2, query="steel", category="kitchen") == ["chef-knife"]


def test_products_added_mid_walk_do_not_disturb_the_order() -> None:
    cat = demo_catalogue()
    page1, token = cat.page(d.parse_list_request(5, "", "", ""))
    # Sorts before everything on page 1: not seen in this walk, nothing repeated.
    assert cat.add(new(product_id="aaa", name="AAA First"))
    rest = walk_from(cat, token)
    assert len({p.id for p in page1} | set(rest)) == 12


def walk_from(cat: d.Catalogue, token: str) -> list[str]:
    ids: list[str] = []
    while token:
        page, token = cat.page(d.parse_list_request(5, token, "", ""))
        ids += [p.id for p in page]
    return ids


def test_equal_names_are_ordered_by_id() -> None:
    cat = d.Catalogue()
    for pid in ("b", "c", "a"):
        cat.add(new(product_id=pid, name="Same"))
    assert walk(cat, 1) == ["a", "b", "c"]


def test_add_refuses_a_duplicate_id() -> None:
    cat = demo_catalogue()
    assert not cat.add(new(product_id="yoga-mat", name="Other"))
    assert cat.get("yoga-mat").name == "Yoga Mat"  # type: ignore[union-attr]
    assert len(cat) == 12


def test_batch_split_and_messages() -> None:
    cat = demo_catalogue()
    known, missing = cat.split(["yoga-mat", "nope", "dune-2", "yoga-mat", "nope"])
    assert set(known) == {"yoga-mat"} and missing == ["nope", "dune-2", "nope"]
    assert d.not_found_message(missing) == "products not found: nope, dune-2"
    assert d.not_found_message(["x"]) == "product x not found"


def test_validate_batch() -> None:
    assert d.validate_batch(["a", "a"]) == ["a", "a"]
    assert d.validate_batch([]) == []
    with pytest.raises(InvalidArgument, match="at most 100"):
        d.validate_batch(["a"] * 101)
    with pytest.raises(InvalidArgument, match="ids is required"):
        d.validate_batch(["a", ""])
