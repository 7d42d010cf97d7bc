"""gRPC status -> HTTP status, and the one error body every failure answers with:

{"error": {"code": 404, "status": "NOT_FOUND", "message": "...", "details": []}}
"""

from __future__ import annotations

import json
from typing import Any

import grpc
from google.protobuf import json_format
from google.rpc import status_pb2
from grpc import aio

from services.common.errors import DomainError

HTTP_BY_GRPC: dict[str, int] = {
    "OK": 200,
    "INVALID_ARGUMENT": 400,
    "FAILED_PRECONDITION": 400,
    "OUT_OF_RANGE": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "ABORTED": 409,
    "RESOURCE_EXHAUSTED": 429,
    "CANCELLED": 499,
    "UNIMPLEMENTED": 501,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}


def http_status_of(grpc_status: str) -> int:
    """HTTP status for a gRPC status name; 500 for UNKNOWN, INTERNAL, DATA_LOSS and the rest."""
    return HTTP_BY_GRPC.get(grpc_status, 500)


class HttpError(Exception):
    """A failure the gateway answers itself (bad input, auth, limits)."""

    def __init__(
        self,
        http_status: int,
        status: str,
        message: str,
        *,
        headers: list[tuple[bytes, bytes]] | None = None,
        details: list[Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.status = status
        self.message = message
        self.headers = headers or []
        self.details = details or []

    def body(self) -> bytes:
        return error_body(self.http_status, self.status, self.message, self.details)


def bad_request(message: str) -> HttpError:
    return HttpError(400, "INVALID_ARGUMENT", message)


def error_body(code: int, status: str, message: str, details: list[Any] | None = None) -> bytes:
    payload = {
        "error": {"code": code, "status": status, "message": message, "details": details or []}
    }
    text = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    try:
        return text.encode()
    except UnicodeEncodeError:  # a lone surrogate echoed from the request: escape it
        return json.dumps(payload, separators=(",", ":")).encode()


def _rich_details(err: aio.AioRpcError) -> list[Any]:
    """google.rpc.Status details sent as `grpc-status-details-bin`, best effort."""
    for key, value in err.trailing_metadata() or ():
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            try:
                st = status_pb2.Status.FromString(value)
            except Exception:
                return []
            out: list[Any] = []
            for any_msg in st.details:
                try:
                    out.append(json_format.MessageToDict(any_msg))
                except Exception:  # an unregistered detail type: say at least what it is
                    out.append({"@type": any_msg.type_url})
            return out
    return []


# Transport-level failures: their details name internal addresses, so they are not shown.
_OPAQUE = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "INTERNAL", "UNKNOWN", "DATA_LOSS"})


def _challenge(http_status: int) -> list[tuple[bytes, bytes]]:
    """A 401 carries WWW-Authenticate (RFC 9110 11.6.1), also when a service refused."""
    return [(b"www-authenticate", b"Bearer")] if http_status == 401 else []


def from_rpc_error(err: aio.AioRpcError, service: str = "downstream") -> HttpError:
    code: grpc.StatusCode = err.code()
    name = code.name
    if name in _OPAQUE:
        message = f"{service} service: {name.replace('_', ' ').lower()}"
    else:
        message = err.details() or name.replace("_", " ").lower()
    status = http_status_of(name)
    return HttpError(status, name, message, headers=_challenge(status), details=_rich_details(err))


def from_domain_error(err: DomainError) -> HttpError:
    status = http_status_of(err.status)
    return HttpError(status, err.status, err.message or err.status, headers=_challenge(status))
