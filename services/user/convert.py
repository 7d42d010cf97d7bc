"""Domain user -> proto, shared by the servicer (responses) and the store (events)."""

from __future__ import annotations

from shop.user.v1 import user_pb2

from services.common.timestamps import set_timestamp
from services.user.domain import User


def to_proto(u: User) -> user_pb2.User:
    # No password hash here, ever: User has no such field, and this is the only mapping.
    msg = user_pb2.User(id=u.id, email=u.email, name=u.name, roles=u.roles)
    set_timestamp(msg.create_time, u.create_time)
    return msg
