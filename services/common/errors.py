"""Domain errors: what went wrong, in business terms, named by the gRPC status it maps to.

Stdlib only, so domain modules can raise them. The per-call wrapper (interceptors.py) is
the one place that turns them into gRPC status codes (`status` holds the grpc.StatusCode
member name).
"""

from __future__ import annotations


class DomainError(Exception):
    """A refusal the caller can understand; never a server bug."""

    # A bare DomainError is a business rule refusing the request.
    status: str = "FAILED_PRECONDITION"

    def __init__(self, message: str = "") -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class NotFound(DomainError):
    status = "NOT_FOUND"


class InvalidArgument(DomainError):
    status = "INVALID_ARGUMENT"


class AlreadyExists(DomainError):
    status = "ALREADY_EXISTS"


class FailedPrecondition(DomainError):
    status = "FAILED_PRECONDITION"


class PermissionDenied(DomainError):
    status = "PERMISSION_DENIED"


class Unauthenticated(DomainError):
    status = "UNAUTHENTICATED"


class ResourceExhausted(DomainError):
    status = "RESOURCE_EXHAUSTED"


class Unavailable(DomainError):
    status = "UNAVAILABLE"


class DeadlineExceeded(DomainError):
    status = "DEADLINE_EXCEEDED"


ALL_KINDS: tuple[type[DomainError], ...] = (
    NotFound,
    InvalidArgument,
    AlreadyExists,
    FailedPrecondition,
    PermissionDenied,
    Unauthenticated,
    ResourceExhausted,
    Unavailable,
    DeadlineExceeded,
)
