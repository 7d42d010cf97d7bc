"""The request limits of gateway.constraints, held by the gateway itself.

The OpenAPI document publishes those limits; checking them here too makes the document
exact both ways: what it calls valid gets through to the service, what it calls invalid
is refused with 400 naming the field, whatever a service would have made of it (some
fold case or strip space before their own, looser, checks).

A check runs on the built request message, so a value from the body, the path or the
query is held to the same limit. proto3 does not tell an unset field from one at its
default; every required field has a limit its default fails, which is how "required"
is enforced.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from gateway import constraints
from gateway.errors import bad_request

Check = Callable[[Any], str | None]  # a value -> what is wrong with it, or None


def _check_of(schema: constraints.Schema) -> Check | None:
    tests: list[Check] = []
    if "minLength" in schema:
        low = int(schema["minLength"])
        tests.append(lambda v: f"must be at least {low} characters" if len(v) < low else None)
    if "maxLength" in schema:
        high = int(schema["maxLength"])
        tests.append(lambda v: f"must be at most {high} characters" if len(v) > high else None)
    if "pattern" in schema:
        pattern = re.compile(schema["pattern"])
        means = constraints.PATTERN_MEANS.get(pattern.pattern, f"must match {pattern.pattern}")
        tests.append(lambda v: None if pattern.search(v) else means)
    if "minimum" in schema:
        low_n = int(schema["minimum"])
        tests.append(lambda v: f"must be at least {low_n}" if v < low_n else None)
    if "maximum" in schema:
        high_n = int(schema["maximum"])
        tests.append(lambda v: f"must be at most {high_n}" if v > high_n else None)
    if "maxItems" in schema:
        most = int(schema["maxItems"])
        tests.append(lambda v: f"must have at most {most} items" if len(v) > most else None)
    if not tests:
        return None

    def check(value: Any) -> str | None:
        for test in tests:
            problem = test(value)
            if problem is not None:
                return problem
        return None

    return check


@dataclass(frozen=True, slots=True)
class _FieldCheck:
    field: FieldDescriptor
    whole: Check | None  # the value (the list, for a repeated field)
    each: Check | None  # every element of a repeated field
    nested: RequestChecks | None  # the messages of a message field


class RequestChecks:
    """The checks of one request message type (and the messages it holds)."""

    def __init__(self, desc: Any, _seen: dict[str, RequestChecks] | None = None) -> None:
        seen = {} if _seen is None else _seen
        seen[desc.full_name] = self
        self.fields: list[_FieldCheck] = []
        for fd in desc.fields:
            whole = _check_of(constraints.for_field(fd.full_name))
            each = _check_of(constraints.for_items(fd.full_name))
            nested = None
            if fd.message_type is not None and not fd.message_type.GetOptions().map_entry:
                sub = fd.message_type
                nested = seen.get(sub.full_name) or RequestChecks(sub, seen)
                if not nested.fields:
                    nested = None
            if whole or each or nested:
                self.fields.append(_FieldCheck(fd, whole, each, nested))

    def check(self, message: Message, where: str = "") -> None:
        """400 naming the first field over its limit."""
        for fc in self.fields:
            fd = fc.field
            name = f"{where}{fd.json_name}"
            value = getattr(message, fd.name)
            if fc.whole is not None:
                problem = fc.whole(value)
                if problem is not None:
                    raise bad_request(f"field {name} {problem}")
            if fd.is_repeated:
                for i, item in enumerate(value):
                    if fc.each is not None:
                        problem = fc.each(item)
                        if problem is not None:
                            raise bad_request(f"field {name}[{i}] {problem}")
                    if fc.nested is not None:
                        fc.nested.check(item, f"{name}[{i}].")
            elif fc.nested is not None and message.HasField(fd.name):
                fc.nested.check(value, f"{name}.")
