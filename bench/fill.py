"""A grown shop on disk: the services' SQLite files and the NATS store, filled in bulk.

`fill(data_dir, sizes)` writes straight into the files the services open (users, orders
with sagas and history, the notifications and sent mails their events made, inbox rows):
each file made by the project's migration runner (`services.common.db.migrate`, so the
schema is exactly the services'), then rows added with executemany in large transactions
(no journal while filling, WAL again at the end, as the services leave it), then the
events published into a JetStream store under `<data_dir>/nats` (bench.fill_stream). The
layout is the one `ops.run` and the bench's shop use: `<data_dir>/<service>.db`,
`<data_dir>/nats/`.

`ensure_filled(sizes)` keeps one filled copy per size under `var/bench/filled/`, reused
while its manifest (fill format, schema versions, sizes, nats-server version) matches and
it is younger than `MAX_AGE_S` (its inbox rows and events must stay inside the horizons
the consumers and the stream prune by). `clone(kept, run_dir)` copies it for one run, so a
run never changes the kept copy.
"""

from __future__ import annotations

import fcntl
import json
import os
import random
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, TypeVar

from bench.fill_plan import PASSWORD, FillSizes, OrderPlan, Planner, inbox_rows
from bench.fill_stream import fill_stream
from ops.natsd import find_binary
from ops.process import REPO_ROOT
from services.common.db import migrate
from services.common.schema import COMMON, MigrationSet, service_migrations

__all__ = ["KEPT_ROOT", "MAX_AGE_S", "Filled", "checkout", "clone", "count_rows", "ensure_filled",
           "fill"]

KEPT_ROOT = REPO_ROOT / "var" / "bench" / "filled"
MANIFEST = "filled.json"
# Bumped whenever what a fill writes changes: an older kept copy is then filled again.
FORMAT = 3
# A kept copy older than this is filled again: its newest inbox rows are two days old at
# the fill, and the inboxes forget rows past the stream's max age (7 days) plus a margin.
MAX_AGE_S = 4 * 86400.0
# Rows per executemany, and orders per transaction.
_CHUNK = 50_000
_ORDERS_PER_TX = 200_000
# The files a fill writes (the other services create theirs empty at start; inventory's
# holds only its consumer's inbox rows: its stock is seeded at start).
FILLED_DBS = ("user", "order", "notification", "cart", "shipping", "inventory")

T = TypeVar("T")
Say = Callable[[str], None]

_INSERT_ORDER = ("INSERT INTO orders (id, user_id, items, total_cents, currency, status,"
                 " cancel_reason, tracking_number, from_cart, idempotency_key, create_time,"
                 " update_time) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
_INSERT_SAGA = ("INSERT INTO sagas (order_id, step, status, attempt, charged, cancel_requested,"
                " reason, card_token, version, owner, lease_until, updated_at, committed,"
                " uncertain, waits, refusal) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?,"
                " ?, ?)")
_INSERT_HISTORY = ("INSERT INTO saga_history (order_id, step, outcome, attempt, time, error)"
                   " VALUES (?, ?, ?, ?, ?, ?)")
_INSERT_USER = ("INSERT INTO users (id, email, name, password_hash, create_time)"
                " VALUES (?, ?, ?, ?, ?)")
_INSERT_RECIPIENT = "INSERT INTO recipients (user_id, email, name) VALUES (?, ?, ?)"
_INSERT_INBOX = "INSERT INTO inbox (consumer, event_id, handled_at) VALUES (?, ?, ?)"
_INSERT_NOTE = ("INSERT INTO notifications (id, user_id, kind, subject, body, read, created_at,"
                " event_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
_INSERT_DELIVERY = ("INSERT INTO deliveries (notification_id, recipient, name, status, attempts,"
                    " next_attempt_at, request_id, created_at, done_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")


@dataclass(frozen=True)
class Filled:
    dir: Path
    manifest: dict[str, Any]
    reused: bool


def _say_nothing(_msg: str) -> None:
    return None


def _migrations(service: str) -> list[MigrationSet]:
    return [COMMON, service_migrations(service)]


def schema_versions() -> dict[str, dict[str, int]]:
    """Per filled file, the newest migration of each component (released files are never
    edited, so the versions name the schema)."""
    return {svc: {m.component: max((x.version for x in m.for_dialect("sqlite")), default=0)
                  for m in _migrations(svc)} for svc in FILLED_DBS}


def nats_version() -> str:
    out = subprocess.run([find_binary(), "--version"], capture_output=True, text=True,
                         timeout=30, check=False)
    return out.stdout.strip()


def _chunks(rows: Iterable[T], size: int = _CHUNK) -> Iterator[list[T]]:
    it = iter(rows)
    while chunk := list(islice(it, size)):
        yield chunk


def _bulk(path: Path) -> sqlite3.Connection:
    """A connection for filling: no journal, no fsync, a large page cache. Nobody else has
    the file open, and a failed fill is thrown away whole."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=OFF")
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("PRAGMA cache_size=-3000000")  # up to 3 GB: the indexes stay in memory
    conn.execute("PRAGMA temp_store=MEMORY")
    return conn


def _finish(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA journal_mode=WAL")  # as the services leave their files
    conn.close()


def _insert(conn: sqlite3.Connection, sql: str, rows: Iterable[Sequence[Any]]) -> int:
    n = 0
    conn.execute("BEGIN")
    for chunk in _chunks(rows):
        conn.executemany(sql, chunk)
        n += len(chunk)
    conn.execute("COMMIT")
    return n


def _notes(conn: sqlite3.Connection,
           rows: Iterable[tuple[tuple[Any, ...], tuple[Any, ...]]]) -> None:
    pairs = list(rows)
    conn.executemany(_INSERT_NOTE, [n for n, _ in pairs])
    conn.executemany(_INSERT_DELIVERY, [d for _, d in pairs])


def _fill_orders(conn: sqlite3.Connection, notes: sqlite3.Connection,
                 planner: Planner) -> list[OrderPlan]:
    """Orders, sagas and history rows (order.db) and the notifications their events made
    (notification.db), oldest first; returns the newest orders (those whose events the
    stream still holds)."""
    recent: list[OrderPlan] = []
    first_recent = planner.sizes.orders - planner.recent
    rng = random.Random(planner.seed + 3)
    for batch in _chunks(planner.orders(), _ORDERS_PER_TX):
        conn.execute("BEGIN")
        notes.execute("BEGIN")
        for part in _chunks(batch):
            conn.executemany(_INSERT_ORDER, [planner.order_row(o) for o in part])
            conn.executemany(_INSERT_SAGA, [planner.saga_row(o) for o in part])
            conn.executemany(_INSERT_HISTORY,
                             [h for o in part for h in planner.history_rows(o)])
            _notes(notes, (r for o in part for r in planner.notification_rows(o, rng)))
        notes.execute("COMMIT")
        conn.execute("COMMIT")
        recent.extend(o for o in batch if o.index >= first_recent)
    return recent


def count_rows(data_dir: Path) -> dict[str, int]:
    """What a filled data dir holds (read back from the files, not from the plan)."""
    def one(db: str, sql: str) -> int:
        conn = sqlite3.connect(f"file:{data_dir / (db + '.db')}?mode=ro", uri=True)
        try:
            return int(conn.execute(sql).fetchone()[0])
        finally:
            conn.close()

    inbox = sum(one(db, "SELECT count(*) FROM inbox") for db in FILLED_DBS)
    return {
        "users": one("user", "SELECT count(*) FROM users"),
        "orders": one("order", "SELECT count(*) FROM orders"),
        "sagas": one("order", "SELECT count(*) FROM sagas"),
        "saga_history": one("order", "SELECT count(*) FROM saga_history"),
        "recipients": one("notification", "SELECT count(*) FROM recipients"),
        "notifications": one("notification", "SELECT count(*) FROM notifications"),
        "deliveries": one("notification", "SELECT count(*) FROM deliveries"),
        "inbox": inbox,
    }


def fill(data_dir: Path, sizes: FillSizes, *, now: float | None = None,
         say: Say = _say_nothing) -> dict[str, Any]:
    """Fill `data_dir` (new or empty) with a grown shop of `sizes`; its manifest."""
    from services.user.domain import hash_password  # scrypt: only when filling

    t_all = time.perf_counter()
    now = time.time() if now is None else now
    data_dir.mkdir(parents=True, exist_ok=True)
    planner = Planner(sizes, now)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    for svc in FILLED_DBS:
        migrate(data_dir / f"{svc}.db", _migrations(svc))
    timings["migrate_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    conn = _bulk(data_dir / "user.db")
    _insert(conn, _INSERT_USER, planner.user_rows(hash_password(PASSWORD)))
    _finish(conn)
    notes = _bulk(data_dir / "notification.db")
    _insert(notes, _INSERT_RECIPIENT, planner.recipient_rows())
    notes.execute("BEGIN")
    for part in _chunks(planner.welcome_rows(random.Random(planner.seed + 4))):
        _notes(notes, part)
    notes.execute("COMMIT")
    timings["users_s"] = time.perf_counter() - t0
    say(f"filled {sizes.users:,} users in {timings['users_s']:.1f} s")

    t0 = time.perf_counter()
    conn = _bulk(data_dir / "order.db")
    recent = _fill_orders(conn, notes, planner)
    _finish(notes)
    timings["orders_s"] = time.perf_counter() - t0
    say(f"filled {sizes.orders:,} orders with their sagas, history and notifications in "
        f"{timings['orders_s']:.1f} s")

    t0 = time.perf_counter()
    events = list(planner.events(recent))
    timings["events_built_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    per_db = inbox_rows(events, sizes.inbox)
    for db, rows in per_db.items():
        c = conn if db == "order" else _bulk(data_dir / f"{db}.db")
        _insert(c, _INSERT_INBOX, rows)
        if c is not conn:
            _finish(c)
    _finish(conn)
    timings["inbox_s"] = time.perf_counter() - t0
    say(f"filled {sum(len(r) for r in per_db.values()):,} inbox rows in "
        f"{timings['inbox_s']:.1f} s")

    stream = fill_stream(data_dir / "nats", events)
    timings["stream_s"] = stream["seconds"]
    say(f"published {stream['messages']:,} events into JetStream in {stream['seconds']:.1f} s "
        f"({stream['per_s']:,.0f}/s while publishing, {stream['bytes'] / 1e6:,.0f} MB)")
    del events
    return {
        "format": FORMAT, "sizes": sizes.to_json(), "schema": schema_versions(),
        "nats_server": nats_version(), "filled_at": now,
        "counts": {**count_rows(data_dir), "events": stream["messages"]},
        "stream": stream, "timings": {k: round(v, 2) for k, v in timings.items()},
        "fill_s": round(time.perf_counter() - t_all, 1),
        "bytes": _size(data_dir),
    }


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _matches(manifest: dict[str, Any], sizes: FillSizes, now: float) -> str:
    """"" when the kept copy can be reused, else why not."""
    if manifest.get("format") != FORMAT:
        return f"fill format {manifest.get('format')} (now {FORMAT})"
    if manifest.get("sizes") != sizes.to_json():
        return f"sizes {manifest.get('sizes')}"
    if manifest.get("schema") != schema_versions():
        return "schema versions changed"
    if manifest.get("nats_server") != nats_version():
        return "another nats-server"
    age = now - float(manifest.get("filled_at", 0.0))
    if not 0 <= age < MAX_AGE_S:
        return f"filled {age / 86400:.1f} days ago"
    return ""


def read_manifest(kept: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads((kept / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def ensure_filled(sizes: FillSizes, root: Path = KEPT_ROOT, *,
                  say: Say = _say_nothing) -> Filled:
    """The kept filled copy of `sizes` under `root`, filled now unless a matching one is
    there. The manifest is written last, into a dir renamed into place whole: an
    interrupted fill is never taken for a finished one."""
    kept = root / sizes.label()
    manifest = read_manifest(kept)
    why = "none kept" if manifest is None else _matches(manifest, sizes, time.time())
    if manifest is not None and not why:
        say(f"reusing the filled copy {kept} (filled in {manifest.get('fill_s', 0):.0f} s)")
        return Filled(kept, manifest, reused=True)
    say(f"filling {kept} ({why}): {sizes.orders:,} orders, {sizes.users:,} users, "
        f"{sizes.inbox:,} inbox rows, {sizes.events:,} events")
    root.mkdir(parents=True, exist_ok=True)
    work = root / f".filling-{sizes.label()}-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    try:
        manifest = fill(work, sizes, say=say)
        (work / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        shutil.rmtree(kept, ignore_errors=True)
        work.rename(kept)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return Filled(kept, manifest, reused=False)


@contextmanager
def _locked(root: Path) -> Iterator[None]:
    """One bench at a time fills, replaces or copies the kept fills under `root` (two runs
    at once would otherwise fill the same dir, or copy one being replaced)."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def checkout(sizes: FillSizes, run_dir: Path, root: Path = KEPT_ROOT, *,
             say: Say = _say_nothing) -> tuple[Filled, float]:
    """`ensure_filled`, then `clone` into `run_dir`, holding the kept fills' lock; the
    fill and the seconds the copy took."""
    with _locked(root):
        filled = ensure_filled(sizes, root, say=say)
        return filled, clone(filled.dir, run_dir)


def clone(kept: Path, run_dir: Path) -> float:
    """Copy the kept copy to `run_dir` (which must not exist) and write it out; seconds it
    took. Written out before anything is measured: gigabytes of dirty pages still going
    to disk would slow every fsync of the measured processes (a cold start most)."""
    t0 = time.perf_counter()
    shutil.copytree(kept, run_dir, ignore=shutil.ignore_patterns(MANIFEST, "*.log", "ports"))
    os.sync()
    return time.perf_counter() - t0
