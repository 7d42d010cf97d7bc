"""The console's event tail: numbered in arrival order, each event once."""

from __future__ import annotations

from shop.user.v1 import user_pb2

from gateway.admin import TAIL_SIZE, EventTail
from services.common.outbox import new_envelope


def _event(correlation: str = "rid-1") -> bytes:
    env = new_envelope("user.created", user_pb2.UserCreated(), source="user",
                       aggregate_id="u1", correlation_id=correlation, traceparent="")
    return env.SerializeToString()


def test_events_are_numbered_and_read_since_a_number() -> None:
    tail = EventTail()
    first, second = _event("a"), _event("b")
    tail.add("user.created", first, None)
    tail.add("user.created", second, None)
    tail.add("user.created", first, None)  # the seed and the subscription overlap
    assert [e.correlation_id for e in tail.since(0)] == ["a", "b"]
    assert [e.n for e in tail.since(1)] == [2]
    assert tail.last == 2
    got = tail.since(0)[0].to_json()
    assert got["subject"] == "user.created" and got["source"] == "user"
    assert got["time"].endswith("Z") and got["correlationId"] == "a"


def test_an_undecodable_message_is_still_shown_by_subject_and_header() -> None:
    tail = EventTail()
    tail.add("order.created", b"\xff\xfe not protobuf", {"x-request-id": "rid-9"})
    (event,) = tail.since(0)
    assert (event.subject, event.correlation_id) == ("order.created", "rid-9")


def test_the_tail_is_bounded() -> None:
    tail = EventTail()
    for n in range(TAIL_SIZE + 10):
        tail.add("user.created", _event(str(n)), None)
    assert len(tail.since(0, limit=10_000)) == TAIL_SIZE
    assert tail.since(0, limit=10_000)[0].correlation_id == "10"
