"""Rebuild and verify: replay every stream of the stock ledger and compare with the stock
rows served.

Streams are read a batch of products per read, each from its latest snapshot, or from its
first event with `from_scratch` (which then also checks every stored snapshot against the
replay). Reads are short and the loop is given back between them: on SQLite a read runs
inline on the event loop, so one long read would stall the service's calls. A
product whose row differs is fixed in a write unit of its own that replays its stream
again: the row then matches the stream as it is at that commit, appends made meanwhile
included.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from services.common.storage import Storage, Tx
from services.inventory import eventstore as es
from services.inventory import ledger
from services.inventory.ledger import InvalidEvent, Level

_BATCH = 20


@dataclass(frozen=True, slots=True)
class Difference:
    product_id: str
    served: Level | None  # None: no stock row
    replayed: Level | None  # None: the stream could not be replayed
    problem: str


@dataclass(slots=True)
class Report:
    products: int = 0
    events: int = 0
    differences: list[Difference] = field(default_factory=list)
    rewritten: int = 0


def _describe(served: Level, replayed: Level) -> str:
    names = ("available", "reserved", "sold", "total", "version")
    parts = [f"{n} {getattr(served, n)} (events say {getattr(replayed, n)})"
             for n in names if getattr(served, n) != getattr(replayed, n)]
    return "served " + ", ".join(parts)


async def _product_ids(tx: Tx, after: str, limit: int) -> list[str]:
    """The next `limit` product ids after `after` that have a stock row or a stream; the
    streams are walked by index seeks (a loose index scan, one query), not by a scan of
    every event."""
    rows = await tx.fetch("SELECT product_id FROM stock WHERE product_id > ?"
                          " ORDER BY product_id LIMIT ?", (after, limit))
    ids = {str(r[0]) for r in rows}
    streams = await tx.fetch(
        "WITH RECURSIVE streams(pid, n) AS ("
        " SELECT MIN(product_id), 1 FROM inventory_events WHERE product_id > ?"
        " UNION ALL SELECT (SELECT MIN(product_id) FROM inventory_events"
        " WHERE product_id > streams.pid), n + 1 FROM streams"
        " WHERE streams.pid IS NOT NULL AND n < ?)"
        " SELECT pid FROM streams WHERE pid IS NOT NULL", (after, limit))
    ids.update(str(r[0]) for r in streams)
    return sorted(ids)[:limit]


async def _served(tx: Tx, product_id: str) -> Level | None:
    head = (await es.heads(tx, [product_id], lock=False)).get(product_id)
    return None if head is None else head.level


async def _full_replay(tx: Tx, product_id: str) -> tuple[es.Loaded, list[int]]:
    """The stream replayed from its first event, in one pass that also compares every
    snapshot (of the current format) with the level at its version; with the versions of
    the snapshots that differ (or lie past the stream's end)."""
    snaps = {int(r["version"]): str(r["state"]) for r in await tx.fetch(
        "SELECT version, state FROM inventory_snapshots WHERE product_id = ? AND format = ?",
        (product_id, ledger.SNAPSHOT_FORMAT))}
    level = ledger.EMPTY
    bad: list[int] = []
    events = await es.events_after(tx, product_id, 0)
    for r in events:
        level = ledger.apply(level, r.event)
        if level.version in snaps and ledger.from_snapshot(
                snaps[level.version], level.version, ledger.SNAPSHOT_FORMAT) != level:
            bad.append(level.version)
    bad += [v for v in snaps if v > level.version]
    at = events[-1].at if events else 0.0
    return es.Loaded(level, len(events), at), sorted(bad)


async def _replay(tx: Tx, product_id: str, from_scratch: bool) -> tuple[es.Loaded, list[int]]:
    if from_scratch:
        return await _full_replay(tx, product_id)
    return await es.load(tx, product_id), []


def _verdict(product_id: str, served: Level | None, loaded: es.Loaded,
             bad: list[int]) -> tuple[int, Difference | None]:
    """(events replayed, what differs or None) for one stream."""
    replayed = loaded.level
    if served is None:
        return loaded.replayed, Difference(product_id, None, replayed, "no stock row")
    if replayed.version == 0:
        return 0, Difference(product_id, served, None, "a stock row without events")
    if served != replayed:
        return loaded.replayed, Difference(product_id, served, replayed,
                                           _describe(served, replayed))
    if bad:
        return loaded.replayed, Difference(
            product_id, served, replayed,
            f"snapshot at version {', '.join(map(str, bad))} differs from the replay")
    return loaded.replayed, None


def _unreplayable(product_id: str, served: Level | None,
                  err: InvalidEvent) -> tuple[int, Difference]:
    return 0, Difference(product_id, served, None, f"events cannot be replayed: {err}")


async def _check(tx: Tx, product_id: str, from_scratch: bool) -> tuple[int, Difference | None]:
    served = await _served(tx, product_id)
    try:
        loaded, bad = await _replay(tx, product_id, from_scratch)
    except InvalidEvent as err:
        return _unreplayable(product_id, served, err)
    return _verdict(product_id, served, loaded, bad)


async def _check_from_snapshots(tx: Tx, ids: list[str]) -> list[tuple[int, Difference | None]]:
    """`_check` of a batch of streams from their snapshots: their heads and newest
    snapshots in one query each, then one range of events per stream."""
    heads = await es.heads(tx, ids, lock=False)
    snaps = await es.latest_snapshots(tx, ids)
    out: list[tuple[int, Difference | None]] = []
    for pid in ids:
        head = heads.get(pid)
        served = None if head is None else head.level
        snap = snaps.get(pid)
        start, at = (snap.level, snap.at) if snap is not None else (ledger.EMPTY, 0.0)
        events = await es.events_after(tx, pid, start.version)
        try:
            level = ledger.fold((r.event for r in events), start)
        except InvalidEvent as err:
            out.append(_unreplayable(pid, served, err))
            continue
        loaded = es.Loaded(level, len(events), events[-1].at if events else at)
        out.append(_verdict(pid, served, loaded, []))
    return out


async def _fix(storage: Storage, product_id: str, from_scratch: bool) -> bool:
    """Rewrite one stock row (and drop the snapshots that disagree) from a replay made in
    the same write; False when its stream cannot be replayed."""
    async def run(tx: Tx) -> bool:
        await es.heads(tx, [product_id])  # appends to the stream wait for this write
        try:
            loaded, bad = await _replay(tx, product_id, from_scratch)
        except InvalidEvent:
            return False
        lv = loaded.level
        if lv.version == 0:
            return False
        values = (lv.available, lv.reserved, lv.sold, lv.total, lv.version, loaded.at)
        await tx.run(
            "INSERT INTO stock (product_id, available, reserved, sold, total, version,"
            " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (product_id) DO UPDATE SET"
            " available = excluded.available, reserved = excluded.reserved,"
            " sold = excluded.sold, total = excluded.total, version = excluded.version,"
            " updated_at = excluded.updated_at", (product_id, *values))
        for version in bad:
            await tx.run("DELETE FROM inventory_snapshots WHERE product_id = ? AND version = ?",
                         (product_id, version))
        return True

    return await storage.write(run, locked=True)


async def rebuild(storage: Storage, *, verify_only: bool, from_scratch: bool,
                  batch: int = _BATCH) -> Report:
    """Replay every stream; with `verify_only` report the differences only, else also
    rewrite the rows that differ."""
    report = Report()
    after = ""
    while True:
        async def step(tx: Tx, after: str = after) -> tuple[list[str], list[tuple[
                int, Difference | None]]]:
            ids = await _product_ids(tx, after, batch)
            if not from_scratch:
                return ids, await _check_from_snapshots(tx, ids)
            return ids, [await _check(tx, pid, from_scratch) for pid in ids]

        ids, checked = await storage.read(step)
        if not ids:
            return report
        await asyncio.sleep(0)  # the service's calls go on between batches
        after = ids[-1]
        for replayed, diff in checked:
            report.products += 1
            report.events += replayed
            if diff is None:
                continue
            report.differences.append(diff)
            if not verify_only and diff.replayed is not None and await _fix(
                    storage, diff.product_id, from_scratch):
                report.rewritten += 1
