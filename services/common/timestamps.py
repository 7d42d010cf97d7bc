"""Seconds since the epoch (float, as the stores keep them) <-> google.protobuf.Timestamp.

`set_timestamp` fills a message's own field in place: a Timestamp built apart and passed
to a constructor is copied in, which costs on every response.
"""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

_NS = 1_000_000_000


def set_timestamp(ts: Timestamp, seconds: float) -> None:
    """`ts` = `seconds` since the epoch (Timestamp.FromNanoseconds, without its checks)."""
    ts.seconds, ts.nanos = divmod(int(seconds * _NS), _NS)


def timestamp(seconds: float) -> Timestamp:
    """A new Timestamp of `seconds` since the epoch."""
    ts = Timestamp()
    set_timestamp(ts, seconds)
    return ts


def seconds(ts: Timestamp) -> float:
    """`ts` as seconds since the epoch."""
    return ts.seconds + ts.nanos / _NS
