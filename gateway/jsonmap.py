"""proto3 canonical JSON both ways, as grpc-gateway v2 does it.

Out: lowerCamelCase names, enums by name, int64 as strings, every field present even at
its default. In: both the JSON and the proto names, unknown fields refused.
String values (path and query parameters) are converted by field type here too.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from gateway.errors import bad_request
from gateway.protojson import to_dict as _to_dict
from gateway.rules import enum_of, message_of

_INT_TYPES = frozenset(
    {
        FieldDescriptor.TYPE_INT32,
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT32,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_SINT32,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_FIXED32,
        FieldDescriptor.TYPE_FIXED64,
        FieldDescriptor.TYPE_SFIXED32,
        FieldDescriptor.TYPE_SFIXED64,
    }
)
_INT_RANGES: dict[int, tuple[int, int]] = {
    FieldDescriptor.CPPTYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.CPPTYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.CPPTYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.CPPTYPE_UINT64: (0, 2**64 - 1),
}


def to_dict(message: Message) -> dict[str, Any]:
    """MessageToDict(message, always_print_fields_with_no_presence=True), byte for byte,
    from a serializer precompiled per message type (gateway.protojson)."""
    value: dict[str, Any] = _to_dict(message)
    return value


# One encoder for the process: json.dumps with non-default arguments builds a new
# JSONEncoder on every call. Same output, byte for byte.
_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def dumps(value: Any) -> bytes:
    return _encode(value).encode()


# Integers longer than this are refused while decoding: no field holds more than 20
# digits, and Python's int() is quadratic in the length (it refuses past 4,300 digits).
MAX_INT_DIGITS = 64
# A \uD800-\uDFFF escape on its own decodes to a lone surrogate, which protobuf cannot
# take as a string or a field name; only bodies with such an escape are walked.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


class _BadNumber(ValueError):
    pass


def _parse_int(text: str) -> int:
    digits = len(text) - text.startswith("-")
    if digits > MAX_INT_DIGITS:
        raise _BadNumber(f"an integer of {digits} digits (at most {MAX_INT_DIGITS})")
    return int(text)


def _has_lone_surrogate(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if not item.isascii():
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError:
                    return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def loads_body(raw: bytes) -> Any:
    """Parse a request body; malformed JSON is a 400 (never an exception of another kind)."""
    try:
        value = json.loads(raw, parse_int=_parse_int)
    except _BadNumber as err:
        raise bad_request(f"malformed JSON body: {err}") from None
    except RecursionError:
        raise bad_request("malformed JSON body: nested too deeply") from None
    except (UnicodeDecodeError, ValueError) as err:  # JSONDecodeError is a ValueError
        raise bad_request(f"malformed JSON body: {err}") from None
    if _SURROGATE_ESCAPE.search(raw) and _has_lone_surrogate(value):
        raise bad_request("malformed JSON body: a \\u escape names a lone surrogate")
    return value


def parse_into(value: Any, message: Message, *, where: str = "body") -> None:
    """Merge a decoded JSON value into `message`; wrong shapes and unknown fields are 400."""
    if not isinstance(value, dict):
        raise bad_request(f"{where} must be a JSON object")
    try:
        json_format.ParseDict(value, message, ignore_unknown_fields=False)
    except json_format.ParseError as err:
        raise bad_request(f"invalid {where}: {err}") from None
    except (ValueError, TypeError, OverflowError, RecursionError) as err:
        raise bad_request(f"invalid {where}: {err}") from None


_TIMESTAMP = Timestamp.DESCRIPTOR.full_name


def _timestamp(raw: str, name: str) -> Timestamp:
    ts = Timestamp()
    try:
        ts.FromJsonString(raw)
    except ValueError:
        raise bad_request(f"parameter {name!r}: invalid time {raw!r}; give an RFC 3339 time"
                          " such as 2026-01-31T12:00:00Z") from None
    return ts


def scalar_from_string(fd: FieldDescriptor, raw: str, *, name: str) -> Any:
    """A path or query parameter converted to the Python value of field `fd`."""
    t = fd.type
    try:
        if t == FieldDescriptor.TYPE_STRING:
            return raw
        if t in _INT_TYPES:
            value = int(raw, 10)
            low, high = _INT_RANGES[fd.cpp_type]
            if not low <= value <= high:
                raise ValueError("out of range")
            return value
        if t in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
            return float(raw)
        if t == FieldDescriptor.TYPE_BOOL:
            lowered = raw.lower()
            if lowered in ("true", "1"):
                return True
            if lowered in ("false", "0"):
                return False
            raise ValueError("not a boolean")
        if t == FieldDescriptor.TYPE_ENUM:
            enum = enum_of(fd)
            by_name = enum.values_by_name.get(raw)
            if by_name is not None:
                return by_name.number
            number = int(raw, 10)
            if number not in enum.values_by_number:
                raise ValueError("unknown enum value")
            return number
        if t == FieldDescriptor.TYPE_BYTES:
            return base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
        if t == FieldDescriptor.TYPE_MESSAGE and message_of(fd).full_name == _TIMESTAMP:
            return _timestamp(raw, name)
    except (ValueError, binascii.Error):
        raise bad_request(f"parameter {name!r}: invalid value {raw!r}") from None
    raise bad_request(f"parameter {name!r} cannot be given as a string")
