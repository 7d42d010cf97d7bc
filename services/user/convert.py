"""Domain user -> proto, shared by the servicer (responses) and the store (events)."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp
from shop.user.v1 import user_pb2

from services.user.domain import User

_NS = 1_000_000_000


def timestamp(seconds: float) -> Timestamp:
    ts = Timestamp()
    ts.seconds, ts.nanos = divmod(int(seconds * 1_000_000_000), _NS)  # = FromNanoseconds
    return ts


def to_proto(u: User) -> user_pb2.User:
    # No password hash here, ever: User has no such field, and this is the only mapping.
    msg = user_pb2.User(id=u.id, email=u.email, name=u.name, roles=u.roles)
    # Set in place: a Timestamp built apart and passed in would be copied.
    msg.create_time.seconds, msg.create_time.nanos = divmod(
        int(u.create_time * 1_000_000_000), _NS)
    return msg
