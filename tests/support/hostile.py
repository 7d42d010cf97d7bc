"""Hypothesis strategies for what a careless or hostile client sends: any bytes, any JSON
(huge and non-finite numbers, lone surrogates, deep nesting), known field names holding
values of every type, numbers too long for Python to read."""

from __future__ import annotations

import json
from collections.abc import Sequence

from hypothesis import strategies as st

# Past 4,300 digits Python cannot even print an int: longer ones are made as text.
huge_ints = st.integers(min_value=1, max_value=4000).map(lambda n: 10**n - 1)
long_digits = st.integers(min_value=1, max_value=8000).map(lambda n: "9" * n)
numbers = st.one_of(
    st.integers(),
    huge_ints,
    huge_ints.map(lambda n: -n),
    st.floats(allow_nan=True, allow_infinity=True),
)
# Lone surrogates too: json.dumps escapes them as \udXXX, which decodes back to them.
json_texts = st.text(
    st.one_of(
        st.characters(exclude_categories=()),
        st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF, exclude_categories=()),
    ),
    max_size=40,
)
# What fits in a URL (no lone surrogates: they have no UTF-8 form).
url_texts = st.text(st.characters(codec="utf-8"), min_size=1, max_size=40)
scalars = st.one_of(st.none(), st.booleans(), numbers, json_texts)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(json_texts, inner, max_size=4)
    ),
    max_leaves=20,
)


@st.composite
def shaped_bodies(draw: st.DrawFn, names: Sequence[str]) -> bytes:
    """Objects with the request's own field names (and nested ones) holding any value."""
    keys = st.one_of(st.sampled_from(list(names)), json_texts) if names else json_texts
    body = draw(st.dictionaries(keys, json_values, max_size=5))
    for key, value in list(body.items()):
        if draw(st.booleans()) and isinstance(value, dict | list):
            body[key] = [{"productId": value, "quantity": value}]
    return json.dumps(body).encode()


def _long_number(draw: st.DrawFn) -> bytes:
    digits = draw(st.integers(min_value=1, max_value=8000))
    sign = draw(st.sampled_from(["", "-"]))
    tail = draw(st.sampled_from(["", ".5", "e999", "e-999", ".0e5000"]))
    return f"{sign}{'7' * digits}{tail}".encode()


@st.composite
def raw_bodies(draw: st.DrawFn, names: Sequence[str]) -> bytes:
    """A request body of one of five kinds: bytes, JSON, shaped JSON, a field holding a
    number too long to read, a field holding nesting up to 30,000 deep."""
    names = list(names) or ["x"]
    kind = draw(st.integers(min_value=0, max_value=4))
    if kind == 0:
        return draw(st.binary(max_size=200))
    if kind == 1:
        return json.dumps(draw(json_values)).encode()
    if kind == 2:
        return draw(shaped_bodies(names))
    if kind == 3:
        name = draw(st.sampled_from(names))
        return b'{"' + name.encode() + b'": ' + _long_number(draw) + b"}"
    depth = draw(st.integers(min_value=1, max_value=30_000))
    opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]))
    name_bytes = draw(st.sampled_from(names)).encode()
    return b'{"' + name_bytes + b'": ' + opener * depth + b"1" + closer * depth + b"}"
