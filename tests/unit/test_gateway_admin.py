"""The console's event tail: numbered in arrival order, each event once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from shop.order.v1 import order_pb2
from shop.user.v1 import user_pb2

from gateway.admin import TAIL_SIZE, AdminConsole, EventTail
from gateway.errors import HttpError
from services.common.clients import rpc_name
from services.common.errors import NotFound
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


class _Order:
    """An order service stand-in: GetSagaHistory answers one REQUIRES_ATTENTION order."""

    service = "order"

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    async def call(self, rpc: Callable[[Any], Any], request: Any, *, idempotent: bool,
                   timeout: float | None = None) -> Any:  # noqa: ASYNC109
        self.calls.append((rpc_name(rpc), request))
        if request.order_id != "o1":
            raise NotFound(f"order {request.order_id} not found")
        step = order_pb2.SagaStep(step="refund", outcome="failed", attempt=8, error="boom")
        step.time.FromSeconds(1_700_000_000)
        return order_pb2.GetSagaHistoryResponse(
            order_id="o1", status=order_pb2.ORDER_STATUS_REQUIRES_ATTENTION, steps=[step])

    async def close(self) -> None:
        return None


async def test_the_saga_timeline_and_retry_follow_the_contract() -> None:
    order = _Order()
    console = AdminConsole(None, lambda: order, "nats://127.0.0.1:1")  # type: ignore[arg-type]
    got = await console.saga("o1")
    assert got["status"] == "ORDER_STATUS_REQUIRES_ATTENTION"
    assert got["steps"] == [{"step": "refund", "outcome": "failed", "attempt": 8,
                             "time": "2023-11-14T22:13:20Z", "error": "boom"}]
    # A saga waiting for an operator is offered a retry, which calls RetrySaga.
    assert got["retryable"] is True
    await console.retry("o1")
    assert [m for m, _ in order.calls][-2:] == ["RetrySaga", "GetSagaHistory"]
    with pytest.raises(HttpError) as missing:
        await console.saga("nope")
    assert missing.value.http_status == 404
