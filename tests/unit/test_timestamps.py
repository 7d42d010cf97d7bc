"""services.common.timestamps: seconds since the epoch <-> google.protobuf.Timestamp."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp
from shop.order.v1 import order_pb2

from services.common.timestamps import seconds, set_timestamp, timestamp


def test_a_timestamp_round_trips_to_the_microsecond() -> None:
    ts = timestamp(1_700_000_000.123456)
    expected = Timestamp()
    expected.FromNanoseconds(1_700_000_000_123_456_000)
    assert abs(ts.ToNanoseconds() - expected.ToNanoseconds()) < 1_000
    assert abs(seconds(ts) - 1_700_000_000.123456) < 1e-6


def test_set_timestamp_fills_a_messages_own_field() -> None:
    msg = order_pb2.Order()
    set_timestamp(msg.create_time, 12.5)
    assert (msg.create_time.seconds, msg.create_time.nanos) == (12, 500_000_000)
    assert msg.HasField("create_time")
