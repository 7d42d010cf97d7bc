"""The REST routes, read from the `google.api.http` annotations of the generated descriptors.

Path template grammar (google/api/http.proto):

    Template = "/" Segments [ Verb ] ;  Segment = "*" | "**" | LITERAL | Variable ;
    Variable = "{" FieldPath [ "=" Segments ] "}" ;  Verb = ":" LITERAL ;

Every template is compiled once, at start-up, into a regex (or an exact string when it
has no variables and no wildcards) so matching a request costs a dict lookup or a few
regex tries.
"""

from __future__ import annotations

import importlib
import operator
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from google.api import annotations_pb2, http_pb2
from google.protobuf.descriptor import (
    Descriptor,
    EnumDescriptor,
    FieldDescriptor,
    FileDescriptor,
    MethodDescriptor,
)
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from services.common.settings import SERVICES

HTTP_METHODS = ("get", "put", "post", "delete", "patch")

FieldPath = tuple[FieldDescriptor, ...]


class RuleError(ValueError):
    """An annotation that cannot be served (bad template, unknown field)."""


@dataclass(frozen=True, slots=True)
class Variable:
    """A `{field.path=pattern}` part of a template; `name` is the dotted proto path."""

    name: str
    group: str  # regex group name
    multi_segment: bool  # the pattern holds "**" or several segments


@dataclass(frozen=True, slots=True)
class PathTemplate:
    raw: str
    segments: tuple[str, ...]  # top-level segments as written (a variable counts as one)
    verb: str
    variables: tuple[Variable, ...]
    regex: re.Pattern[str]
    literal: bool  # no variables, no wildcards: matched by exact string
    fixed_length: bool  # no "**": matches only paths with len(segments) segments

    @property
    def literal_count(self) -> int:
        return sum(1 for s in self.segments if not s.startswith("{") and "*" not in s)

    def openapi_path(self) -> str:
        """The template as an OpenAPI path (variables keep their dotted names)."""
        parts: list[str] = []
        wildcard = 0
        for seg in self.segments:
            if seg.startswith("{"):
                parts.append("{" + seg[1:-1].split("=", 1)[0] + "}")
            elif seg in ("*", "**"):
                wildcard += 1
                parts.append(f"{{_wildcard{wildcard}}}")
            else:
                parts.append(seg)
        return "/" + "/".join(parts) + (":" + self.verb if self.verb else "")


def _split_segments(text: str) -> list[str]:
    """Split on "/" outside braces."""
    out: list[str] = []
    depth = 0
    start = 0
    for i, ch in enumerate(text):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth < 0:
                raise RuleError(f"unbalanced braces in {text!r}")
        elif ch == "/" and depth == 0:
            out.append(text[start:i])
            start = i + 1
    if depth != 0:
        raise RuleError(f"unbalanced braces in {text!r}")
    out.append(text[start:])
    return out


_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_LITERAL = re.compile(r"^[A-Za-z0-9._~!$&'()+,;=@%-]+$")


def _segment_regex(seg: str) -> str:
    if seg == "*":
        return "[^/]+"
    if seg == "**":
        return ".+"
    if not _LITERAL.match(seg):
        raise RuleError(f"bad literal segment {seg!r}")
    return re.escape(seg)


def parse_template(raw: str) -> PathTemplate:
    """Parse and compile one path template."""
    if not raw.startswith("/"):
        raise RuleError(f"template must start with '/': {raw!r}")
    body = raw[1:]
    verb = ""
    # The verb follows the last ':' outside braces in the last segment.
    segments = _split_segments(body)
    last = segments[-1]
    close = last.rfind("}")
    colon = last.rfind(":")
    if colon > close:
        verb = last[colon + 1 :]
        segments[-1] = last[:colon]
        if not _LITERAL.match(verb):
            raise RuleError(f"bad verb in {raw!r}")
    if any(s == "" for s in segments):
        raise RuleError(f"empty segment in {raw!r}")

    variables: list[Variable] = []
    parts: list[str] = []
    fixed_length = True
    for i, seg in enumerate(segments):
        if seg.startswith("{"):
            if not seg.endswith("}"):
                raise RuleError(f"bad variable {seg!r} in {raw!r}")
            inner = seg[1:-1]
            name, _, pattern = inner.partition("=")
            if not _IDENT.match(name):
                raise RuleError(f"bad field path {name!r} in {raw!r}")
            sub = _split_segments(pattern) if pattern else ["*"]
            if any(s.startswith("{") for s in sub):
                raise RuleError(f"nested variable in {raw!r}")
            group = f"v{len(variables)}"
            multi = len(sub) > 1 or "**" in sub
            if "**" in sub:
                fixed_length = False
            variables.append(Variable(name=name, group=group, multi_segment=multi))
            parts.append(f"(?P<{group}>" + "/".join(_segment_regex(s) for s in sub) + ")")
        else:
            if seg == "**":
                fixed_length = False
                if i != len(segments) - 1:
                    raise RuleError(f"'**' must be last in {raw!r}")
            parts.append(_segment_regex(seg))
    # A variable with a multi-segment pattern spans several path segments.
    if any(v.multi_segment for v in variables):
        fixed_length = False
    pattern = "/" + "/".join(parts) + (re.escape(":" + verb) if verb else "")
    literal = not variables and not any(s in ("*", "**") for s in segments)
    return PathTemplate(
        raw=raw,
        segments=tuple(segments),
        verb=verb,
        variables=tuple(variables),
        regex=re.compile("^" + pattern + "$"),
        literal=literal,
        fixed_length=fixed_length,
    )


def resolve_field_path(message: Descriptor, dotted: str) -> FieldPath:
    """The fields a dotted proto path walks through; RuleError if one does not exist."""
    path: list[FieldDescriptor] = []
    desc: Descriptor | None = message
    for name in dotted.split("."):
        if desc is None:
            raise RuleError(f"{dotted!r}: {path[-1].name} is not a message")
        fd = desc.fields_by_name.get(name)
        if fd is None:
            raise RuleError(f"{message.full_name} has no field {dotted!r}")
        path.append(fd)
        desc = fd.message_type if fd.type == FieldDescriptor.TYPE_MESSAGE else None
    return tuple(path)


@dataclass(frozen=True, slots=True)
class HttpRule:
    """One REST binding of one RPC."""

    http_method: str  # upper case
    template: PathTemplate
    service: str  # short name, e.g. "order" (the Downstream name)
    service_full_name: str  # e.g. "shop.order.v1.OrderService"
    rpc: str  # e.g. "CreateOrder"
    input: Descriptor
    output: Descriptor
    input_class: type[Message]
    body: str  # "" (no body), "*" or a top-level field name
    response_body: str  # "" or a top-level field of the output
    path_fields: tuple[tuple[Variable, FieldPath], ...]
    additional: bool = False  # from additional_bindings
    stub_class: Any = field(default=None, compare=False)

    @property
    def key(self) -> str:
        return f"{self.http_method} {self.template.raw}"

    @property
    def method_of(self) -> Callable[[Any], Any]:
        """The selector of this rule's method on its stub (`Downstream.call`'s first
        argument), from the proto method the rule was read from."""
        return operator.attrgetter(self.rpc)


def _pattern_of(rule: http_pb2.HttpRule) -> tuple[str, str]:
    kind = rule.WhichOneof("pattern")
    if kind is None:
        raise RuleError("http rule without a pattern")
    if kind == "custom":
        return rule.custom.kind.upper(), rule.custom.path
    return kind.upper(), str(getattr(rule, kind))


def _build_rule(
    short: str,
    method: MethodDescriptor,
    rule: http_pb2.HttpRule,
    *,
    additional: bool,
    stub_class: Any,
) -> HttpRule:
    http_method, raw = _pattern_of(rule)
    template = parse_template(raw)
    inp = method.input_type
    out = method.output_type
    path_fields = tuple((v, resolve_field_path(inp, v.name)) for v in template.variables)
    for var, fp in path_fields:
        if fp[-1].type == FieldDescriptor.TYPE_MESSAGE or is_repeated(fp[-1]):
            raise RuleError(f"{raw}: path variable {var.name} must be a singular scalar")
    if rule.body and rule.body != "*":
        resolve_field_path(inp, rule.body)
        if "." in rule.body:
            raise RuleError(f"{method.full_name}: body must be '*' or a top-level field")
    if rule.response_body and (
        "." in rule.response_body or rule.response_body not in out.fields_by_name
    ):
        raise RuleError(f"{method.full_name}: unknown response_body {rule.response_body!r}")
    return HttpRule(
        http_method=http_method,
        template=template,
        service=short,
        service_full_name=method.containing_service.full_name,
        rpc=method.name,
        input=inp,
        output=out,
        input_class=GetMessageClass(inp),
        body=rule.body,
        response_body=rule.response_body,
        path_fields=path_fields,
        additional=additional,
        stub_class=stub_class,
    )


def is_repeated(fd: FieldDescriptor) -> bool:
    return bool(fd.is_repeated)


def message_of(fd: FieldDescriptor) -> Descriptor:
    """The message type of a message field (RuleError for any other field)."""
    if fd.message_type is None:
        raise RuleError(f"{fd.full_name} is not a message field")
    return fd.message_type


def enum_of(fd: FieldDescriptor) -> EnumDescriptor:
    if fd.enum_type is None:
        raise RuleError(f"{fd.full_name} is not an enum field")
    return fd.enum_type


def rules_of_file(
    short: str, file: FileDescriptor, grpc_module: ModuleType | None = None
) -> Iterator[HttpRule]:
    """Every binding (main and additional) of every RPC in one file."""
    for service in file.services_by_name.values():
        stub_class = getattr(grpc_module, f"{service.name}Stub", None) if grpc_module else None
        for method in service.methods:
            options = method.GetOptions()
            if not options.HasExtension(annotations_pb2.http):
                continue
            rule = options.Extensions[annotations_pb2.http]
            yield _build_rule(short, method, rule, additional=False, stub_class=stub_class)
            for extra in rule.additional_bindings:
                if extra.additional_bindings:
                    raise RuleError(f"{method.full_name}: nested additional_bindings")
                yield _build_rule(short, method, extra, additional=True, stub_class=stub_class)


def load_rules(services: Iterable[str] = SERVICES) -> list[HttpRule]:
    """Every annotated route of shop, from `shop.<svc>.v1.<svc>_pb2` descriptors."""
    rules: list[HttpRule] = []
    seen: dict[tuple[str, str], str] = {}
    for short in services:
        pb2 = importlib.import_module(f"shop.{short}.v1.{short}_pb2")
        grpc_mod = importlib.import_module(f"shop.{short}.v1.{short}_pb2_grpc")
        for rule in rules_of_file(short, pb2.DESCRIPTOR, grpc_mod):
            key = (rule.http_method, rule.template.regex.pattern)
            if key in seen:
                raise RuleError(f"{rule.key} bound twice ({seen[key]} and {rule.rpc})")
            seen[key] = rule.rpc
            rules.append(rule)
    return rules
