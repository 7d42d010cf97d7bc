"""The expiry of stale reservations acts on what the order service says of each order:
commit a confirmed one's, release a cancelled or unknown one's, keep the rest (a saga
still running, no answer) and ask again next time."""

from __future__ import annotations

from collections.abc import Sequence

from services.inventory.domain import Reservation
from services.inventory.expiry import Fate, ReservationExpiry


class FakeStore:
    def __init__(self, stale: Sequence[str]) -> None:
        self.stale = list(stale)
        self.committed: list[str] = []
        self.released: list[str] = []
        self.asked_limits: list[int] = []

    async def stale_reservations(self, older_than: float, limit: int = 100) -> list[str]:
        self.asked_limits.append(limit)
        return self.stale[:limit]

    async def commit_confirmed(self, order_id: str) -> Reservation:
        self.committed.append(order_id)
        self.stale.remove(order_id)
        return None  # type: ignore[return-value]  # not read by the sweep

    async def release(self, order_id: str) -> Reservation:
        self.released.append(order_id)
        self.stale.remove(order_id)
        return None  # type: ignore[return-value]


class FakeFates:
    def __init__(self, fates: dict[str, Fate]) -> None:
        self.fates = fates
        self.asked: list[str] = []

    async def fate(self, order_id: str) -> Fate:
        self.asked.append(order_id)
        return self.fates[order_id]


def _expiry(store: FakeStore, fates: FakeFates) -> ReservationExpiry:
    return ReservationExpiry(store, fates, ttl_s=60)  # type: ignore[arg-type]


async def test_each_stale_reservation_is_settled_by_its_orders_fate() -> None:
    fates = {"confirmed": Fate.CONFIRMED, "cancelled": Fate.GONE, "pending": Fate.OPEN,
             "unreachable": Fate.UNKNOWN}
    store = FakeStore(list(fates))
    done = await _expiry(store, FakeFates(fates)).sweep()
    assert store.committed == ["confirmed"]
    assert store.released == ["cancelled"]
    # Kept: still stale, asked again on the next sweep.
    assert store.stale == ["pending", "unreachable"]
    assert done[Fate.OPEN] == ["pending"] and done[Fate.UNKNOWN] == ["unreachable"]


async def test_kept_reservations_do_not_hide_the_ones_behind_them() -> None:
    # More kept ones than a page holds, then some to release: every one is asked once.
    ids = [f"pending-{i}" for i in range(150)] + [f"gone-{i}" for i in range(30)]
    fates = FakeFates({o: Fate.OPEN if o.startswith("pending") else Fate.GONE for o in ids})
    store = FakeStore(ids)
    await _expiry(store, fates).sweep()
    assert sorted(fates.asked) == sorted(ids)
    assert len(store.released) == 30
    assert store.stale == ids[:150]


async def test_an_empty_sweep_asks_nobody() -> None:
    fates = FakeFates({})
    store = FakeStore([])
    done = await _expiry(store, fates).sweep()
    assert fates.asked == [] and store.asked_limits == [100]
    assert not any(done.values())
