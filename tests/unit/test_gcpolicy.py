"""The collector set-up every shop process runs before it serves."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from services.common.gcpolicy import SERVING_THRESHOLDS, tune_for_serving


@pytest.fixture
def restored_gc() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


def test_the_start_up_heap_is_frozen_and_gen0_runs_less_often(restored_gc: None) -> None:
    tune_for_serving()
    assert gc.get_threshold() == SERVING_THRESHOLDS
    assert gc.get_freeze_count() > 0
    assert SERVING_THRESHOLDS[0] > 2_000  # fewer passes than Python's default


def test_cycles_made_while_serving_are_still_freed(restored_gc: None) -> None:
    tune_for_serving()
    a, b = _Node(), _Node()
    a.other, b.other = b, a
    gone = weakref.ref(a)
    del a, b
    assert gone() is not None  # only a cycle pass can free them
    gc.collect()
    assert gone() is None


def test_garbage_left_by_start_up_is_freed_not_frozen(restored_gc: None) -> None:
    a, b = _Node(), _Node()
    a.other, b.other = b, a
    gone = weakref.ref(a)
    del a, b
    tune_for_serving()
    assert gone() is None
