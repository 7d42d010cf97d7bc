"""proto3 canonical JSON both ways, as grpc-gateway v2 does it.

Out: lowerCamelCase names, enums by name, int64 as strings, every field present even at
its default. In: both the JSON and the proto names, unknown fields refused.
String values (path and query parameters) are converted by field type here too.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from gateway.errors import bad_request
from gateway.protojson import to_dict as _to_dict
from gateway.rules import enum_of

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


def loads_body(raw: bytes) -> Any:
    """Parse a request body; malformed JSON is a 400."""
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise bad_request(f"malformed JSON body: {err}") from None
    except RecursionError:
        raise bad_request("malformed JSON body: nested too deeply") from None


def parse_into(value: Any, message: Message, *, where: str = "body") -> None:
    """Merge a decoded JSON value into `message`; wrong shapes and unknown fields are 400."""
    if not isinstance(value, dict):
        raise bad_request(f"{where} must be a JSON object")
    try:
        json_format.ParseDict(value, message, ignore_unknown_fields=False)
    except json_format.ParseError as err:
        raise bad_request(f"invalid {where}: {err}") from None
    except (ValueError, TypeError, RecursionError) as err:
        raise bad_request(f"invalid {where}: {err}") from None


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
    except (ValueError, binascii.Error):
        raise bad_request(f"parameter {name!r}: invalid value {raw!r}") from None
    raise bad_request(f"parameter {name!r} cannot be given as a string")
