"""The stock ledger's fold: property tests over generated event streams."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.inventory import ledger as lg
from services.inventory.ledger import Event, InvalidEvent, Kind, Level

# An operation a client may ask for; the model below turns the valid ones into events.
Op = tuple[str, int, int]  # (what, order number or count, quantity)

ops = st.lists(
    st.one_of(
        st.tuples(st.just("set"), st.integers(0, 50), st.just(0)),
        st.tuples(st.just("reserve"), st.integers(0, 12), st.integers(1, 20)),
        st.tuples(st.sampled_from(["release", "commit", "restock"]), st.integers(0, 12),
                  st.just(0)),
    ),
    max_size=80,
)
openings = st.one_of(st.none(), st.tuples(st.integers(0, 30), st.integers(0, 30),
                                          st.integers(0, 30)))


@dataclass
class Model:
    """An independent account per order: what each holds reserved and has bought."""

    available: int = 0
    holds: dict[str, int] = field(default_factory=dict)
    bought: dict[str, int] = field(default_factory=dict)
    # Orders that reached the end of their life (released or restocked): never again.
    done: set[str] = field(default_factory=set)
    carried_reserved: int = 0
    carried_sold: int = 0
    total: int = 0

    def reserved(self) -> int:
        return self.carried_reserved + sum(self.holds.values())

    def sold(self) -> int:
        return self.carried_sold + sum(self.bought.values())

    def event(self, op: Op) -> Event | None:
        """The event `op` records, or None when the rules refuse it."""
        what, n, qty = op
        order = f"o{n}"
        if what == "set":
            self.available = n
            self.total = n + self.reserved() + self.sold()
            return Event(Kind.STOCK_SET, n)
        known = order in self.holds or order in self.bought or order in self.done
        if what == "reserve":
            if known or qty > self.available:
                return None
            self.available -= qty
            self.holds[order] = qty
            return Event(Kind.RESERVED, qty, order)
        if what == "release" and order in self.holds:
            qty = self.holds.pop(order)
            self.available += qty
            self.done.add(order)
            return Event(Kind.RELEASED, qty, order)
        if what == "commit" and order in self.holds:
            qty = self.holds.pop(order)
            self.bought[order] = qty
            return Event(Kind.COMMITTED, qty, order)
        if what == "restock" and order in self.bought:
            qty = self.bought.pop(order)
            self.available += qty
            self.done.add(order)
            return Event(Kind.RESTOCKED, qty, order)
        return None


def stream(opening: tuple[int, int, int] | None, operations: list[Op]) -> tuple[
        list[Event], Model]:
    model = Model()
    events: list[Event] = []
    if opening is not None:
        a, r, s = opening
        model.available, model.carried_reserved, model.carried_sold = a, r, s
        model.total = a + r + s
        events.append(Event(Kind.STOCK_SET, a, carried=(r, s)))
    for op in operations:
        e = model.event(op)
        if e is not None:
            events.append(e)
    return events, model


@settings(max_examples=300, deadline=None)
@given(openings, ops)
def test_any_valid_stream_keeps_the_stock_invariant(
        opening: tuple[int, int, int] | None, operations: list[Op]) -> None:
    events, model = stream(opening, operations)
    level = lg.EMPTY
    for e in events:
        level = lg.apply(level, e)
        assert min(level.available, level.reserved, level.sold) >= 0
        assert level.available + level.reserved + level.sold == level.total
    assert level.version == len(events)
    # The fold agrees with the per-order account kept apart from it.
    assert (level.available, level.reserved, level.sold, level.total) == (
        model.available, model.reserved(), model.sold(), model.total)


@settings(max_examples=300, deadline=None)
@given(openings, ops, st.data())
def test_snapshot_plus_the_rest_equals_the_full_replay(
        opening: tuple[int, int, int] | None, operations: list[Op], data: st.DataObject) -> None:
    events, _ = stream(opening, operations)
    cut = data.draw(st.integers(0, len(events)))
    head = lg.fold(events[:cut])
    stored = lg.from_snapshot(lg.snapshot_state(head), head.version, lg.SNAPSHOT_FORMAT)
    assert stored == head
    assert lg.fold(events[cut:], stored) == lg.fold(events)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(list(Kind)), st.integers(0, 30),
                          st.sampled_from(["", "o1", "o2"])), max_size=40))
def test_any_event_stream_folds_to_a_valid_level_or_is_refused(
        raw: list[tuple[Kind, int, str]]) -> None:
    level = lg.EMPTY
    for kind, qty, order in raw:
        try:
            level = lg.apply(level, Event(kind, qty, order))
        except InvalidEvent:
            continue
        assert min(level.available, level.reserved, level.sold) >= 0
        assert level.available + level.reserved + level.sold == level.total


@pytest.mark.parametrize(("level", "event", "message"), [
    (Level(2, 0, 0, 2, 1), Event(Kind.RESERVED, 3, "o1"), "reserve 3 with 2 available"),
    (Level(2, 1, 0, 3, 2), Event(Kind.RELEASED, 2, "o1"), "release 2 with 1 reserved"),
    (Level(2, 1, 0, 3, 2), Event(Kind.COMMITTED, 2, "o1"), "commit 2 with 1 reserved"),
    (Level(2, 0, 1, 3, 3), Event(Kind.RESTOCKED, 2, "o1"), "restock 2 with 1 sold"),
    (lg.EMPTY, Event(Kind.RESERVED, 1), "order id missing"),
    (lg.EMPTY, Event(Kind.STOCK_SET, 1, "o1"), "order id given"),
    (lg.EMPTY, Event(Kind.STOCK_SET, -1), "negative quantity"),
    (lg.EMPTY, Event(Kind.RESERVED, 0, "o1"), "moves no units"),
    (Level(1, 0, 0, 1, 1), Event(Kind.STOCK_SET, 1, carried=(0, 0)), "at version 2, not 1"),
])
def test_apply_refuses_what_cannot_follow(level: Level, event: Event, message: str) -> None:
    with pytest.raises(InvalidEvent, match=message):
        lg.apply(level, event)


def test_a_stock_count_keeps_reserved_and_sold() -> None:
    level = lg.fold([Event(Kind.STOCK_SET, 10), Event(Kind.RESERVED, 3, "o1"),
                     Event(Kind.COMMITTED, 3, "o1"), Event(Kind.RESERVED, 2, "o2"),
                     Event(Kind.STOCK_SET, 4)])
    assert level == Level(available=4, reserved=2, sold=3, total=9, version=5)


@pytest.mark.parametrize(("state", "fmt"), [
    ('{"available":1,"reserved":0,"sold":0,"total":1}', lg.SNAPSHOT_FORMAT + 1),
    ('{"available":1,"reserved":0,"sold":0,"total":2}', lg.SNAPSHOT_FORMAT),
    ('{"available":-1,"reserved":1,"sold":0,"total":0}', lg.SNAPSHOT_FORMAT),
    ('{"available":1}', lg.SNAPSHOT_FORMAT),
    ("not json", lg.SNAPSHOT_FORMAT),
])
def test_a_snapshot_of_another_format_or_broken_is_ignored(state: str, fmt: int) -> None:
    assert lg.from_snapshot(state, 7, fmt) is None


@pytest.mark.parametrize(("before", "after", "every", "due"), [
    (99, 100, 100, True), (100, 101, 100, False), (98, 101, 100, True),
    (0, 1, 1, True), (5, 6, 0, False), (199, 200, 100, True),
])
def test_snapshot_due_when_an_append_crosses_a_multiple(before: int, after: int, every: int,
                                                        due: bool) -> None:
    assert lg.snapshot_due(before, after, every) is due
