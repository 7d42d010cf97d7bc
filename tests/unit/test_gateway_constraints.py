"""The limits written into the OpenAPI document are the services' own, on real fields."""

from __future__ import annotations

import re

from google.protobuf.descriptor import FieldDescriptor

from gateway import constraints
from gateway.rules import load_rules
from services.product import domain as product
from services.user import domain as user


def _request_fields() -> dict[str, FieldDescriptor]:
    out: dict[str, FieldDescriptor] = {}
    stack = [r.input for r in load_rules()]
    while stack:
        desc = stack.pop()
        for fd in desc.fields:
            if fd.full_name not in out:
                out[fd.full_name] = fd
                if fd.message_type is not None:
                    stack.append(fd.message_type)
    return out


def test_every_constraint_names_a_field_of_a_request() -> None:
    fields = _request_fields()
    unknown = [k for k in constraints.FIELDS if k.removesuffix("[]") not in fields]
    assert unknown == []
    messages = {fd.containing_type.full_name for fd in fields.values()
                if fd.containing_type is not None}
    for message, names in constraints.REQUIRED.items():
        assert message in messages, message
        assert all(f"{message}.{n}" in fields for n in names), message
    # "[]" only on repeated fields, length limits only on strings, bounds only on numbers.
    for key, schema in constraints.FIELDS.items():
        fd = fields[key.removesuffix("[]")]
        if key.endswith("[]") or "maxItems" in schema:
            assert fd.is_repeated, key
        elif {"minLength", "maxLength", "pattern"} & set(schema):
            assert fd.type == FieldDescriptor.TYPE_STRING, key
        elif {"minimum", "maximum"} & set(schema):
            assert fd.cpp_type == FieldDescriptor.CPPTYPE_INT32, key


def test_the_patterns_are_the_services_own() -> None:
    assert user._EMAIL.pattern == constraints.EMAIL_PATTERN
    assert product._ID.pattern == constraints.PRODUCT_ID_PATTERN


def test_nonblank_means_what_strip_leaves() -> None:
    nonblank = re.compile(constraints.NONBLANK)
    for ch in map(chr, range(0x3100)):
        assert bool(nonblank.search(ch)) == bool(ch.strip()), hex(ord(ch))
