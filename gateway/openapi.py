"""OpenAPI 3.1 document made from the same descriptors and rules the gateway serves."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from gateway.rules import enum_of, is_repeated, message_of
from gateway.transcoder import Binding

Schema = dict[str, Any]

ERROR_SCHEMA: Schema = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "status", "message"],
            "properties": {
                "code": {"type": "integer", "description": "HTTP status"},
                "status": {"type": "string", "description": "gRPC status name"},
                "message": {"type": "string"},
                "details": {"type": "array", "items": {}},
            },
        }
    },
}

_INT32 = {"type": "integer", "format": "int32"}
_INT64 = {"type": "string", "format": "int64", "description": "64-bit integer as a string"}
_SCALARS: dict[int, Schema] = {
    FieldDescriptor.TYPE_STRING: {"type": "string"},
    FieldDescriptor.TYPE_BYTES: {"type": "string", "format": "byte"},
    FieldDescriptor.TYPE_BOOL: {"type": "boolean"},
    FieldDescriptor.TYPE_DOUBLE: {"type": "number", "format": "double"},
    FieldDescriptor.TYPE_FLOAT: {"type": "number", "format": "float"},
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
    "google.protobuf.Empty": {"type": "object"},
    "google.protobuf.Struct": {"type": "object"},
    "google.protobuf.Value": {},
    "google.protobuf.Any": {"type": "object"},
    "google.protobuf.FieldMask": {"type": "string"},
}


class _Schemas:
    """components/schemas, filled on demand as messages are referenced."""

    def __init__(self) -> None:
        self.components: dict[str, Schema] = {}

    def ref(self, desc: Descriptor) -> Schema:
        known = _WELL_KNOWN.get(desc.full_name)
        if known is not None:
            return dict(known)
        if desc.full_name not in self.components:
            self.components[desc.full_name] = {}  # placeholder: recursion stops here
            self.components[desc.full_name] = self._message(desc)
        return {"$ref": f"#/components/schemas/{desc.full_name}"}

    def _message(self, desc: Descriptor) -> Schema:
        props = {fd.json_name: self.field(fd) for fd in desc.fields}
        return {"type": "object", "properties": props, "additionalProperties": False}

    def single(self, fd: FieldDescriptor) -> Schema:
        if fd.type == FieldDescriptor.TYPE_MESSAGE:
            return self.ref(message_of(fd))
        if fd.type == FieldDescriptor.TYPE_ENUM:
            return {"type": "string", "enum": [v.name for v in enum_of(fd).values]}
        return dict(_SCALARS[fd.type])

    def field(self, fd: FieldDescriptor) -> Schema:
        if fd.type == FieldDescriptor.TYPE_MESSAGE and message_of(fd).GetOptions().map_entry:
            value = message_of(fd).fields_by_name["value"]
            return {"type": "object", "additionalProperties": self.single(value)}
        if is_repeated(fd):
            return {"type": "array", "items": self.single(fd)}
        return self.single(fd)


def _json_content(schema: Schema) -> Schema:
    return {"application/json": {"schema": schema}}


def _error_response(description: str) -> Schema:
    return {
        "description": description,
        "content": _json_content({"$ref": "#/components/schemas/Error"}),
    }


def _operation(binding: Binding, schemas: _Schemas, *, public: bool, op_id: str) -> Schema:
    rule = binding.rule
    params: list[Schema] = []
    for var, fpath in rule.path_fields:
        params.append(
            {"name": var.name, "in": "path", "required": True, "schema": schemas.single(fpath[-1])}
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
                "schema": schemas.field(leaf),
                **({"explode": True} if is_repeated(leaf) else {}),
            }
        )
    if binding.response_field is not None:
        out_schema = schemas.field(binding.response_field)
    else:
        out_schema = schemas.ref(rule.output)
    responses: Schema = {
        str(binding.success_status): {"description": "OK", "content": _json_content(out_schema)}
    }
    if binding.pending is not None:
        responses["202"] = {
            "description": "Accepted: still pending",
            "content": _json_content(out_schema),
        }
    if not public:
        responses["401"] = _error_response("Missing or invalid bearer token")
    responses["default"] = _error_response("Error")
    op: Schema = {
        "operationId": op_id,
        "tags": [rule.service],
        "summary": f"{rule.service_full_name}.{rule.rpc}",
        "parameters": params,
        "responses": responses,
    }
    if rule.body == "*":
        op["requestBody"] = {"required": False, "content": _json_content(schemas.ref(rule.input))}
    elif rule.body:
        op["requestBody"] = {
            "required": False,
            "content": _json_content(schemas.field(rule.input.fields_by_name[rule.body])),
        }
    if not public:
        op["security"] = [{"bearerAuth": []}]
    return op


def _dashboard_operation(schemas: _Schemas, user: Descriptor, order: Descriptor) -> Schema:
    schema: Schema = {
        "type": "object",
        "required": ["user", "recentOrders", "unreadNotifications", "degraded"],
        "properties": {
            "user": schemas.ref(user),
            "recentOrders": {"type": "array", "items": schemas.ref(order)},
            "unreadNotifications": {"type": "integer"},
            "degraded": {
                "type": "array",
                "items": {"type": "string", "enum": ["user", "order", "notification"]},
            },
        },
    }
    return {
        "operationId": "Gateway_Dashboard",
        "tags": ["gateway"],
        "summary": "The caller's user, 5 most recent orders and unread notification count",
        "security": [{"bearerAuth": []}],
        "responses": {
            "200": {"description": "OK", "content": _json_content(schema)},
            "401": _error_response("Missing or invalid bearer token"),
            "default": _error_response("Error"),
        },
    }


def _plain(operation_id: str, summary: str, media: str) -> Schema:
    return {
        "get": {
            "operationId": operation_id,
            "tags": ["operations"],
            "summary": summary,
            "responses": {"200": {"description": "OK", "content": {media: {"schema": {}}}}},
        }
    }


def build_openapi(
    bindings: Iterable[Binding],
    *,
    is_public: Callable[[str, str], bool],
    dashboard: tuple[Descriptor, Descriptor] | None = None,
    title: str = "shop REST API",
    version: str = "v1",
) -> Schema:
    schemas = _Schemas()
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
    paths["/healthz"] = _plain("Gateway_Healthz", "Liveness", "application/json")
    paths["/readyz"] = _plain("Gateway_Readyz", "Readiness of every downstream", "application/json")
    paths["/metrics"] = _plain("Gateway_Metrics", "Prometheus metrics", "text/plain")
    components: Schema = {
        "schemas": {**dict(sorted(schemas.components.items())), "Error": ERROR_SCHEMA},
        "securitySchemes": {
            "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": version,
            "description": "REST front of shop; JSON is the proto3 canonical mapping.",
        },
        "paths": dict(sorted(paths.items())),
        "components": components,
    }
