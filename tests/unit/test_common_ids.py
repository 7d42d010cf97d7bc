"""Ids: UUIDv7, time first, unique."""

from __future__ import annotations

import time
import uuid

from services.common.ids import new_id


def test_an_id_is_a_uuid7_in_32_hex_digits_with_its_time_first() -> None:
    before = time.time_ns() // 1_000_000
    value = new_id()
    after = time.time_ns() // 1_000_000
    parsed = uuid.UUID(hex=value)
    assert len(value) == 32 and value == value.lower()
    assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
    assert before <= int(value[:12], 16) <= after


def test_ids_are_unique_and_follow_the_clock() -> None:
    ids = [new_id() for _ in range(20_000)]
    assert len(set(ids)) == len(ids)
    time.sleep(0.002)
    later = new_id()
    assert all(later > i for i in ids)  # a later millisecond sorts after every earlier id
