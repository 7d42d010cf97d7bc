"""HTTP request -> request message, response message -> (HTTP status, JSON), per rule.

A `Binding` is one HttpRule with everything a request needs precomputed: which query
parameter names (proto and JSON, dotted for nested fields) set which field, which fields
the path and the body already bind, how the response is rendered and its status code.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from gateway.checks import RequestChecks
from gateway.errors import HttpError, bad_request
from gateway.jsonmap import dumps, loads_body, parse_into, scalar_from_string, to_dict
from gateway.rules import FieldPath, HttpRule, enum_of, is_repeated, message_of

# Nested messages reachable by dotted query parameters, e.g. ?filter.name=x.
_MAX_QUERY_DEPTH = 3
# Well-known types have their own JSON forms; they are not set field by field.
_OPAQUE_PREFIX = "google.protobuf."
# ...but a time is one query parameter in its JSON form (RFC 3339), as grpc-gateway takes it.
_TIMESTAMP = "google.protobuf.Timestamp"


def query_fields(desc: Descriptor, bound: Iterable[str], *, depth: int = 0) -> dict[str, FieldPath]:
    """Query name -> field path for every scalar or enum leaf not bound by path or body.

    Both the proto name and the JSON name are accepted, at every level of a dotted name.
    """
    bound_set = set(bound)
    out: dict[str, FieldPath] = {}
    for fd in desc.fields:
        if fd.name in bound_set:
            continue
        names = {fd.name, fd.json_name}
        if fd.type == FieldDescriptor.TYPE_MESSAGE:
            sub = message_of(fd)
            if sub.full_name == _TIMESTAMP and not is_repeated(fd):
                for n in names:
                    out[n] = (fd,)
                continue
            if (
                is_repeated(fd)
                or depth + 1 >= _MAX_QUERY_DEPTH
                or sub.full_name.startswith(_OPAQUE_PREFIX)
                or sub.GetOptions().map_entry
            ):
                continue
            nested_bound = [b.split(".", 1)[1] for b in bound_set if b.startswith(fd.name + ".")]
            for sub_name, sub_path in query_fields(sub, nested_bound, depth=depth + 1).items():
                for n in names:
                    out[f"{n}.{sub_name}"] = (fd, *sub_path)
        else:
            for n in names:
                out[n] = (fd,)
    return out


def set_path_value(message: Message, path: FieldPath, value: Any) -> None:
    """Set (or append to, for repeated) the leaf of `path`; out-of-range values are 400."""
    target = message
    for fd in path[:-1]:
        target = getattr(target, fd.name)
    leaf = path[-1]
    try:
        if isinstance(value, Message):
            getattr(target, leaf.name).CopyFrom(value)
        elif is_repeated(leaf):
            getattr(target, leaf.name).append(value)
        else:
            setattr(target, leaf.name, value)
    except (ValueError, TypeError) as err:
        raise bad_request(f"field {leaf.json_name}: {err}") from None


def _pending_status_field(desc: Descriptor) -> tuple[FieldDescriptor, int] | None:
    """The enum field `status` and its *_PENDING value, when the resource has them."""
    fd = desc.fields_by_name.get("status")
    if fd is None or fd.type != FieldDescriptor.TYPE_ENUM:
        return None
    for value in enum_of(fd).values:
        if value.name.endswith("_PENDING"):
            return fd, value.number
    return None


@dataclass(slots=True)
class Binding:
    rule: HttpRule
    query: dict[str, FieldPath] = field(default_factory=dict)
    success_status: int = 200
    # Create* answers 202 instead of 201 when the resource comes back still pending.
    pending: tuple[FieldDescriptor, int] | None = None
    response_field: FieldDescriptor | None = None
    # GETs and DELETEs may be retried on UNAVAILABLE; POSTs are not.
    idempotent: bool = False
    reads_body: bool = False
    # The limits of gateway.constraints on this request (None: it has none).
    checks: RequestChecks | None = None

    @classmethod
    def of(cls, rule: HttpRule) -> Binding:
        bound = [v.name for v, _ in rule.path_fields]
        if rule.body == "*":
            query: dict[str, FieldPath] = {}
        else:
            if rule.body:
                bound.append(rule.body)
            query = query_fields(rule.input, bound)
        created = rule.http_method == "POST" and rule.rpc.startswith("Create")
        response_field = (
            rule.output.fields_by_name[rule.response_body] if rule.response_body else None
        )
        pending = None
        if created and response_field is not None and response_field.message_type is not None:
            pending = _pending_status_field(response_field.message_type)
        return cls(
            rule=rule,
            query=query,
            success_status=201 if created else 200,
            pending=pending,
            response_field=response_field,
            idempotent=rule.http_method in ("GET", "DELETE", "PUT"),
            reads_body=bool(rule.body),
            checks=checks if (checks := RequestChecks(rule.input)).fields else None,
        )

    def build_request(
        self,
        path_params: dict[str, str],
        query: list[tuple[str, str]],
        body: bytes,
    ) -> Message:
        """The request message from body, path and query (path wins over body)."""
        rule = self.rule
        msg = rule.input_class()
        if rule.body and body.strip():
            value = loads_body(body)
            if rule.body == "*":
                parse_into(value, msg)
            else:
                parse_into({rule.body: value}, msg)
        if query:
            for name, raw in query:
                path = self.query.get(name)
                if path is None:
                    raise bad_request(f"unknown query parameter {name!r}")
                set_path_value(msg, path, scalar_from_string(path[-1], raw, name=name))
        for var, fpath in rule.path_fields:
            raw = path_params[var.name]
            set_path_value(msg, fpath, scalar_from_string(fpath[-1], raw, name=var.name))
        if self.checks is not None:
            self.checks.check(msg)
        return msg

    def render(self, response: Message) -> tuple[int, bytes]:
        """(HTTP status, JSON body) of a successful call."""
        rf = self.response_field
        status = self.success_status
        if rf is None:
            return status, dumps(to_dict(response))
        value = getattr(response, rf.name)
        if rf.type == FieldDescriptor.TYPE_MESSAGE and not is_repeated(rf):
            if self.pending is not None:
                pfd, pending_number = self.pending
                if getattr(value, pfd.name) == pending_number:
                    status = 202
            return status, dumps(to_dict(value))
        return status, dumps(to_dict(response).get(rf.json_name))


def check_content_type(content_type: str) -> None:
    """A body must be JSON: application/json or application/*+json (415 otherwise)."""
    mime = content_type.split(";", 1)[0].strip().lower()
    if mime == "application/json" or (mime.startswith("application/") and mime.endswith("+json")):
        return
    raise HttpError(
        415,
        "INVALID_ARGUMENT",
        f"unsupported content type {content_type or 'none'!r}; send application/json",
    )
