"""OpenAPI 3.1 document made from the same descriptors and rules the gateway serves."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from gateway import constraints
from gateway.errors import HTTP_BY_GRPC
from gateway.rules import enum_of, is_repeated, message_of
from gateway.transcoder import Binding

Schema = dict[str, Any]

# Every gRPC status name an error body can carry ("status"); HTTP_BY_GRPC says which HTTP
# status each one is answered with (the rest, UNKNOWN/INTERNAL/DATA_LOSS, are 500).
GRPC_STATUSES: tuple[str, ...] = (
    *(name for name in HTTP_BY_GRPC if name != "OK"),
    "UNKNOWN",
    "INTERNAL",
    "DATA_LOSS",
)

ERROR_SCHEMA: Schema = {
    "type": "object",
    "required": ["error"],
    "additionalProperties": False,
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "status", "message", "details"],
            "additionalProperties": False,
            "properties": {
                "code": {"type": "integer", "description": "The HTTP status, repeated"},
                "status": {
                    "type": "string",
                    "enum": list(GRPC_STATUSES),
                    "description": "The gRPC status name",
                },
                "message": {"type": "string"},
                "details": {
                    "type": "array",
                    "description": "google.rpc.Status details, each an Any in JSON form",
                    "items": {"type": "object", "required": ["@type"]},
                },
            },
        }
    },
}

# The error responses an operation may document: HTTP status -> (component name,
# description, the gRPC statuses answered with it besides those of HTTP_BY_GRPC).
_ERRORS: dict[int, tuple[str, str, tuple[str, ...]]] = {
    400: ("BadRequest", "Invalid input, or a business rule refused the request", ()),
    401: ("Unauthenticated", "Missing or invalid bearer token (or wrong credentials)", ()),
    403: ("PermissionDenied", "Not allowed to act on another user's resources", ()),
    404: ("NotFound", "No such resource, or not the caller's", ()),
    409: ("Conflict", "The resource already exists", ()),
    413: ("PayloadTooLarge", "Request body over the gateway's limit", ("INVALID_ARGUMENT",)),
    415: ("UnsupportedMediaType", "Request body is not JSON", ("INVALID_ARGUMENT",)),
    429: ("TooManyRequests", "Rate limit exceeded; see Retry-After", ()),
    503: ("Unavailable", "A downstream service is unavailable (or its breaker is open)", ()),
    504: ("GatewayTimeout", "A downstream service did not answer in time", ()),
}
_X_REQUEST_ID: Schema = {"$ref": "#/components/headers/X-Request-Id"}
_ERROR_HEADERS: dict[int, dict[str, Schema]] = {
    401: {"WWW-Authenticate": {"$ref": "#/components/headers/WWW-Authenticate"}},
    429: {"Retry-After": {"$ref": "#/components/headers/Retry-After"}},
}
HEADERS: Schema = {
    "X-Request-Id": {
        "description": "The caller's X-Request-Id, or a new one; it travels through every hop",
        "required": True,
        "schema": {"type": "string", "pattern": "^[A-Za-z0-9._:\\-]{1,128}$"},
    },
    "WWW-Authenticate": {"required": True, "schema": {"type": "string"}},
    "Retry-After": {
        "description": (
            "Seconds until the caller's rate-limit window ends; sent with every 429 of the "
            "gateway's own limiter (a RESOURCE_EXHAUSTED passed on from a service has none)"
        ),
        "required": False,
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    },
}


def _error_statuses(http_status: int) -> list[str]:
    extra = _ERRORS[http_status][2]
    return [*(g for g, h in HTTP_BY_GRPC.items() if h == http_status), *extra]


def _error_component(http_status: int) -> Schema:
    description = _ERRORS[http_status][1]
    schema: Schema = {
        "allOf": [
            {"$ref": "#/components/schemas/Error"},
            {
                "properties": {
                    "error": {
                        "properties": {
                            "code": {"const": http_status},
                            "status": {"enum": _error_statuses(http_status)},
                        }
                    }
                }
            },
        ]
    }
    return {
        "description": description,
        "headers": {"X-Request-Id": _X_REQUEST_ID, **_ERROR_HEADERS.get(http_status, {})},
        "content": _json_content(schema),
    }


# The canonical mapping writes NaN and the infinities of a float/double as strings.
_NON_FINITE: Schema = {"type": "string", "enum": ["NaN", "Infinity", "-Infinity"]}
_INT32 = {"type": "integer", "format": "int32"}
_INT64 = {"type": "string", "format": "int64", "description": "64-bit integer as a string"}
_SCALARS: dict[int, Schema] = {
    FieldDescriptor.TYPE_STRING: {"type": "string"},
    FieldDescriptor.TYPE_BYTES: {"type": "string", "format": "byte"},
    FieldDescriptor.TYPE_BOOL: {"type": "boolean"},
    FieldDescriptor.TYPE_DOUBLE: {"oneOf": [{"type": "number", "format": "double"}, _NON_FINITE]},
    FieldDescriptor.TYPE_FLOAT: {"oneOf": [{"type": "number", "format": "float"}, _NON_FINITE]},
    FieldDescriptor.TYPE_INT32: _INT32,
    FieldDescriptor.TYPE_SINT32: _INT32,
    FieldDescriptor.TYPE_SFIXED32: _INT32,
    FieldDescriptor.TYPE_UINT32: {"type": "integer", "format": "int64", "minimum": 0},
    FieldDescriptor.TYPE_FIXED32: {"type": "integer", "format": "int64", "minimum": 0},
    FieldDescriptor.TYPE_INT64: _INT64,
    FieldDescriptor.TYPE_SINT64: _INT64,
    FieldDescriptor.TYPE_SFIXED64: _INT64,
    FieldDescriptor.TYPE_UINT64: _INT64,
    FieldDescriptor.TYPE_FIXED64: _INT64,
}
_WELL_KNOWN: dict[str, Schema] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {"type": "string", "pattern": "^-?[0-9]+(\\.[0-9]+)?s$"},
    "google.protobuf.Empty": {"type": "object", "additionalProperties": False},
    "google.protobuf.Struct": {"type": "object"},
    "google.protobuf.Value": {},
    "google.protobuf.Any": {"type": "object"},
    "google.protobuf.FieldMask": {"type": "string"},
}


def reachable_messages(roots: Iterable[Descriptor]) -> set[str]:
    """Full names of the messages in `roots` and of every message their fields reach."""
    seen: set[str] = set()
    stack = list(roots)
    while stack:
        desc = stack.pop()
        if desc.full_name in seen:
            continue
        seen.add(desc.full_name)
        stack.extend(fd.message_type for fd in desc.fields if fd.message_type is not None)
    return seen


class _Schemas:
    """components/schemas, filled on demand as messages are referenced.

    A message has two schemas. As a response (output) every field without presence is
    `required`: the gateway prints those even at their defaults (`0`, `false`, `[]`, `""`),
    while a message or `optional` field that is unset is left out, as MessageToDict does.
    As a request body (input) nothing is required (proto3 has no required fields; the
    services answer 400 for what they need). Unknown properties are refused both ways. A
    message that is both gets its input schema under `<full name>Input`.
    """

    def __init__(self, outputs: set[str]) -> None:
        self.components: dict[str, Schema] = {}
        self._outputs = outputs

    def _name(self, desc: Descriptor, output: bool) -> str:
        if output or desc.full_name not in self._outputs:
            return str(desc.full_name)
        return f"{desc.full_name}Input"

    def ref(self, desc: Descriptor, *, output: bool) -> Schema:
        known = _WELL_KNOWN.get(desc.full_name)
        if known is not None:
            return dict(known)
        name = self._name(desc, output)
        if name not in self.components:
            self.components[name] = {}  # placeholder: recursion stops here
            self.components[name] = self._message(desc, output)
        return {"$ref": f"#/components/schemas/{name}"}

    def _message(self, desc: Descriptor, output: bool) -> Schema:
        schema: Schema = {"type": "object"}
        if output:
            schema["required"] = [fd.json_name for fd in desc.fields if not fd.has_presence]
            schema["properties"] = {fd.json_name: self.field(fd, output=True) for fd in desc.fields}
        else:
            # What the services refuse (gateway.constraints); a field a request may leave
            # out may also be sent as null, which the mapping reads as its default.
            needed = set(constraints.required(desc.full_name))
            props: Schema = {}
            for fd in desc.fields:
                prop = self.constrained(fd)
                props[fd.json_name] = prop if fd.name in needed else _nullable(prop)
            if needed:
                schema["required"] = [fd.json_name for fd in desc.fields if fd.name in needed]
            schema["properties"] = props
        schema["additionalProperties"] = False
        return schema

    def resolved(self, ref: Schema) -> Schema:
        """A copy of the component `ref` points at."""
        name = ref["$ref"].rsplit("/", 1)[-1]
        return dict(self.components[name])

    def constrained(self, fd: FieldDescriptor) -> Schema:
        """The input schema of `fd` with the limits the services hold its values to."""
        schema = self.field(fd, output=False)
        if is_repeated(fd) and schema.get("type") == "array":
            schema["items"] = {**schema["items"], **constraints.for_items(fd.full_name)}
        return {**schema, **constraints.for_field(fd.full_name)}

    def single(self, fd: FieldDescriptor, *, output: bool) -> Schema:
        if fd.type == FieldDescriptor.TYPE_MESSAGE:
            return self.ref(message_of(fd), output=output)
        if fd.type == FieldDescriptor.TYPE_ENUM:
            return {"type": "string", "enum": [v.name for v in enum_of(fd).values]}
        return dict(_SCALARS[fd.type])

    def field(self, fd: FieldDescriptor, *, output: bool) -> Schema:
        if fd.type == FieldDescriptor.TYPE_MESSAGE and message_of(fd).GetOptions().map_entry:
            value = message_of(fd).fields_by_name["value"]
            return {"type": "object", "additionalProperties": self.single(value, output=output)}
        if is_repeated(fd):
            return {"type": "array", "items": self.single(fd, output=output)}
        return self.single(fd, output=output)


_IGNORED: Schema = {"description": "Ignored: the value in the path is the one used"}


def _nullable(schema: Schema) -> Schema:
    """`schema`, or null."""
    if not schema:
        return schema  # anything, null included
    if "$ref" in schema or "allOf" in schema:
        return {"anyOf": [schema, {"type": "null"}]}
    if "oneOf" in schema:
        return {**schema, "oneOf": [*schema["oneOf"], {"type": "null"}]}
    out = dict(schema)
    kind = out.get("type")
    if isinstance(kind, str):
        out["type"] = [kind, "null"]
    if "enum" in out:
        out["enum"] = [*out["enum"], None]
    return out


def _json_content(schema: Schema) -> Schema:
    return {"application/json": {"schema": schema}}


def _ok(description: str, schema: Schema, media: str = "application/json") -> Schema:
    return {
        "description": description,
        "headers": {"X-Request-Id": _X_REQUEST_ID},
        "content": {media: {"schema": schema}},
    }


def _error_ref(http_status: int) -> Schema:
    return {"$ref": f"#/components/responses/{_ERRORS[http_status][0]}"}


def _default_error() -> Schema:
    return {
        "description": "Any other failure (e.g. 500 INTERNAL)",
        "headers": {"X-Request-Id": _X_REQUEST_ID},
        "content": _json_content({"$ref": "#/components/schemas/Error"}),
    }


# RPCs with an outcome of their own beyond the general rules of `_error_codes`.
_RPC_ERRORS: dict[str, tuple[int, ...]] = {
    "shop.user.v1.UserService.Login": (401,),
}


def _names_a_resource(binding: Binding) -> bool:
    """The request names something that may not exist (a path id, an `id`/`*_id(s)` field)."""
    if binding.rule.path_fields:
        return True
    return any(
        fd.name in ("id", "ids") or fd.name.endswith(("_id", "_ids"))
        for fd in binding.rule.input.fields
    )


def _error_codes(binding: Binding, *, public: bool) -> list[int]:
    """The error statuses an operation answers with, besides 500."""
    rule = binding.rule
    codes = {400, 429, 503, 504}  # bad parameters; rate limit; downstream down or slow
    if not public:
        # The token (401; 503 while no signing key can be fetched); another user's id.
        codes |= {401, 403, 404}
    if _names_a_resource(binding):
        codes.add(404)
    if binding.success_status == 201:
        codes.add(409)
    if binding.reads_body:
        codes |= {413, 415}
    codes.update(_RPC_ERRORS.get(f"{rule.service_full_name}.{rule.rpc}", ()))
    return sorted(codes)


def _operation(binding: Binding, schemas: _Schemas, *, public: bool, op_id: str) -> Schema:
    rule = binding.rule
    params: list[Schema] = []
    for var, fpath in rule.path_fields:
        params.append(
            {
                "name": var.name,
                "in": "path",
                "required": True,
                "schema": {
                    **schemas.single(fpath[-1], output=False),
                    **constraints.for_field(fpath[-1].full_name),
                },
            }
        )
    seen: set[tuple[int, ...]] = set()
    for fpath in binding.query.values():
        key = tuple(id(fd) for fd in fpath)
        if key in seen:
            continue
        seen.add(key)
        leaf = fpath[-1]
        params.append(
            {
                "name": ".".join(fd.json_name for fd in fpath),
                "in": "query",
                "required": False,
                "schema": schemas.constrained(leaf),
                **({"explode": True} if is_repeated(leaf) else {}),
            }
        )
    if binding.response_field is not None:
        out_schema = schemas.field(binding.response_field, output=True)
    else:
        out_schema = schemas.ref(rule.output, output=True)
    success = "Created" if binding.success_status == 201 else "OK"
    responses: Schema = {str(binding.success_status): _ok(success, out_schema)}
    if binding.pending is not None:
        pfd, number = binding.pending
        pending_name = enum_of(pfd).values_by_number[number].name
        responses["202"] = _ok(
            f"Accepted: still {pending_name} when the deadline came; poll it",
            {"allOf": [out_schema, {"properties": {pfd.json_name: {"const": pending_name}}}]},
        )
    for code in _error_codes(binding, public=public):
        responses[str(code)] = _error_ref(code)
    responses["default"] = _default_error()
    op: Schema = {
        "operationId": op_id,
        "tags": [rule.service],
        "summary": f"{rule.service_full_name}.{rule.rpc}",
        "parameters": params,
        "responses": responses,
    }
    if rule.body == "*":
        body_schema = schemas.ref(rule.input, output=False)
        by_path = {v.name for v, _ in rule.path_fields}
        if by_path and "$ref" in body_schema:
            # A field the path names may be in the body too, but the path's value is the
            # one used: the body's is not held to anything.
            body_schema = schemas.resolved(body_schema)
            body_schema["properties"] = {
                name: _IGNORED if fd.name in by_path else body_schema["properties"][name]
                for fd in rule.input.fields
                for name in [fd.json_name]
            }
    elif rule.body:
        body_schema = schemas.field(rule.input.fields_by_name[rule.body], output=False)
    if rule.body:
        # A body is needed when the message has fields a request must send.
        needs_body = rule.body == "*" and bool(constraints.required(rule.input.full_name))
        op["requestBody"] = {"required": needs_body, "content": _json_content(body_schema)}
    if not public:
        op["security"] = [{"bearerAuth": []}]
    return op


DEGRADABLE_PARTS = ("user", "order", "notification")


def _dashboard_operation(schemas: _Schemas, user: Descriptor, order: Descriptor) -> Schema:
    schema: Schema = {
        "type": "object",
        "required": ["user", "recentOrders", "unreadNotifications", "degraded"],
        "properties": {
            "user": schemas.ref(user, output=True),
            "recentOrders": {"type": "array", "items": schemas.ref(order, output=True)},
            "unreadNotifications": {"type": "integer", "minimum": 0},
            "degraded": {
                "type": "array",
                "items": {"type": "string", "enum": list(DEGRADABLE_PARTS)},
            },
        },
        "additionalProperties": False,
    }
    return {
        "operationId": "Gateway_Dashboard",
        "tags": ["gateway"],
        "summary": "The caller's user, 5 most recent orders and unread notification count",
        "description": "A failing part falls back and is named in `degraded`; never a 5xx.",
        "security": [{"bearerAuth": []}],
        "responses": {
            "200": _ok("OK", schema),
            "401": _error_ref(401),
            "429": _error_ref(429),
            "503": _error_ref(503),  # no signing key to verify the token with
            "default": _default_error(),
        },
    }


_HEALTH_SCHEMA: Schema = {
    "type": "object",
    "required": ["status"],
    "properties": {"status": {"const": "ok"}},
    "additionalProperties": False,
}
_READY_SCHEMA: Schema = {
    "type": "object",
    "required": ["status", "services"],
    "properties": {
        "status": {"type": "string", "enum": ["ready", "not ready"]},
        "services": {
            "type": "object",
            "description": "service -> SERVING, NOT_SERVING, or why it could not be asked",
            "additionalProperties": {"type": "string"},
        },
    },
    "additionalProperties": False,
}


def _plain(operation_id: str, summary: str, responses: Schema) -> Schema:
    return {
        "get": {
            "operationId": operation_id,
            "tags": ["operations"],
            "summary": summary,
            "responses": responses,
        }
    }


def _ops_paths() -> dict[str, Schema]:
    return {
        "/healthz": _plain("Gateway_Healthz", "Liveness", {"200": _ok("Alive", _HEALTH_SCHEMA)}),
        "/readyz": _plain(
            "Gateway_Readyz",
            "Readiness of every downstream",
            {
                "200": _ok("Every downstream is serving", _READY_SCHEMA),
                "503": _ok("Some downstream is not serving", _READY_SCHEMA),
            },
        ),
        "/metrics": _plain(
            "Gateway_Metrics",
            "Prometheus metrics (text exposition format 0.0.4)",
            {"200": _ok("OK", {"type": "string"}, "text/plain")},
        ),
    }


def build_openapi(
    bindings: Iterable[Binding],
    *,
    is_public: Callable[[str, str], bool],
    dashboard: tuple[Descriptor, Descriptor] | None = None,
    title: str = "shop REST API",
    version: str = "v1",
) -> Schema:
    bindings = list(bindings)
    roots = [
        b.response_field.message_type
        if b.response_field is not None and b.response_field.message_type is not None
        else b.rule.output
        for b in bindings
    ]
    schemas = _Schemas(reachable_messages([*roots, *(dashboard or ())]))
    paths: dict[str, Schema] = {}
    op_ids: set[str] = set()
    for binding in bindings:
        rule = binding.rule
        op_id = f"{rule.service_full_name.rsplit('.', 1)[-1]}_{rule.rpc}"
        n = 1
        while op_id in op_ids:
            n += 1
            op_id = f"{rule.service_full_name.rsplit('.', 1)[-1]}_{rule.rpc}_{n}"
        op_ids.add(op_id)
        public = is_public(rule.http_method, rule.template.raw)
        path_item = paths.setdefault(rule.template.openapi_path(), {})
        op = _operation(binding, schemas, public=public, op_id=op_id)
        path_item[rule.http_method.lower()] = op
    if dashboard is not None:
        paths["/api/dashboard"] = {"get": _dashboard_operation(schemas, *dashboard)}
    paths.update(_ops_paths())
    components: Schema = {
        "schemas": {**dict(sorted(schemas.components.items())), "Error": ERROR_SCHEMA},
        "responses": {name: _error_component(code) for code, (name, _, _) in _ERRORS.items()},
        "headers": HEADERS,
        "securitySchemes": {
            "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": version,
            "description": (
                "REST front of shop; JSON is the proto3 canonical mapping (lowerCamelCase "
                "names, int64 as strings, enums by full name, every field without presence "
                "printed even at its default). Every error answers "
                '{"error": {"code", "status", "message", "details"}}.'
            ),
        },
        "paths": dict(sorted(paths.items())),
        "components": components,
    }
