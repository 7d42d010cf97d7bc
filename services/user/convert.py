"""Domain user -> proto, shared by the servicer (responses) and the store (events)."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp
from shop.user.v1 import user_pb2

from services.user.domain import User


def timestamp(seconds: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(seconds * 1_000_000_000))
    return ts


def to_proto(u: User) -> user_pb2.User:
    # No password hash here, ever: User has no such field, and this is the only mapping.
    return user_pb2.User(id=u.id, email=u.email, name=u.name,
                         create_time=timestamp(u.create_time))
