"""shopctl: the operator command. Talks to the running system over gRPC and NATS.

    shopctl status                 every instance (from the NATS registry): service, address,
                                   health, uptime, breakers
    shopctl saga ORDER_ID          the saga timeline of one order
    shopctl saga retry ORDER_ID    resume a saga left for manual attention
    shopctl dlq list               dead letters
    shopctl dlq replay ID|--all    re-publish dead letters to their original subjects
    shopctl inventory rebuild [--verify] [--from-scratch]
                                   replay every product's stock events (from snapshots, or
                                   from the first event) and print the products whose
                                   stock level differs; without --verify rewrite them
    shopctl mail list              the mails the local catcher of `make run` caught
    shopctl mail show ID           one of them: headers and text (ID, a prefix of it, or
                                   the notification id / Message-ID in it)
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from ops.process import (
    GATEWAY,
    env_prefix,
    grpc_health,
    http_ok,
    operator_nats,
    operator_transport,
)
from services.common import registry
from services.common.cancellation import within
from services.common.settings import DEFAULT_PORTS, SERVICES

__all__ = ["Instance", "StatusRow", "Topology", "discover", "main", "status_rows"]

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"


class CliError(Exception):
    """A one-line message for the operator; exit code 1."""


@dataclass(frozen=True)
class Instance:
    service: str
    instance: str
    addr: str


@dataclass(frozen=True)
class Topology:
    instances: list[Instance]
    nats_url: str


def _recorded(data_dir: Path) -> tuple[list[Instance], str]:
    """What `make run` recorded in <data dir>/run/instances.json: instances, NATS URL."""
    try:
        doc = json.loads((data_dir / "run" / "instances.json").read_text())
        recorded = [Instance(str(i["service"]), str(i["instance"]), str(i["addr"]))
                    for i in doc.get("instances", [])]
        return recorded, str(doc.get("nats_url") or "")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return [], ""  # not started by `make run` here: fall back to env and defaults


def discover(environ: dict[str, str] | None = None) -> Topology:
    """Where the running instances are *configured* to be: `<SERVICE>_ADDR` or the
    default ports, plus what `make run` recorded in <SHOP_DATA_DIR>/run/instances.json
    (scaled instances, non-default ports). `status` asks the NATS registry first and
    uses this only when the registry cannot answer; `saga` and `dlq` use it as is."""
    env = dict(os.environ if environ is None else environ)
    recorded, recorded_url = _recorded(Path(env.get("SHOP_DATA_DIR") or "var"))
    nats_url = env.get("NATS_URL", "") or recorded_url
    found: list[Instance] = []
    for name in (*SERVICES, GATEWAY):
        mine = [i for i in recorded if i.service == name]
        fixed = env.get(f"{env_prefix(name)}_ADDR") or (
            f"127.0.0.1:{env[env_prefix(name) + '_PORT']}"
            if env.get(f"{env_prefix(name)}_PORT", "0") not in ("", "0")
            else f"127.0.0.1:{DEFAULT_PORTS[name]}")
        if not mine:
            mine = [Instance(name, f"{name}-1", fixed)]
        found.extend(mine)
    return Topology(found, nats_url or DEFAULT_NATS_URL)


@dataclass(frozen=True)
class StatusRow:
    """One line of `shopctl status`."""

    service: str
    instance: str
    addr: str
    http: bool = False  # the gateway: /healthz, not grpc.health.v1
    uptime: str = "-"
    breakers: str = "-"
    health: str = ""  # known without a probe ("NOT REGISTERED")
    storage: str = "-"  # the instance's storage backend, from its registry entry


def _health(row: StatusRow, timeout: float) -> str:
    if row.health:
        return row.health
    if row.http:
        return "SERVING" if http_ok(f"http://{row.addr}/healthz", timeout) else "UNREACHABLE"
    return grpc_health(row.addr, timeout, server=row.service)


def format_uptime(seconds: float) -> str:
    """`42s`, `5m07s`, `3h04m`, `2d05h`; "-" when unknown."""
    if seconds < 0 or seconds != seconds:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def format_breakers(states: Mapping[str, str]) -> str:
    """Breakers grouped by state, the worrying ones first:
    `open:payment;closed:cart,inventory`; "-" for none."""
    if not states:
        return "-"
    rank = {"open": 0, "half-open": 1, "closed": 3}
    groups: dict[str, list[str]] = {}
    for name, state in sorted(states.items()):
        groups.setdefault(state, []).append(name)
    ordered = sorted(groups, key=lambda st: (rank.get(st, 2), st))
    return ";".join(f"{st}:{','.join(groups[st])}" for st in ordered)


def breaker_states(inst: Instance) -> str:
    """Breaker states of an instance known only by its address: "-" (they travel in
    the registry entry, which such an instance has not got)."""
    return "-"


def _registry_instances(url: str, timeout: float) -> list[registry.Instance]:
    async def read() -> list[registry.Instance]:
        # nats-py may retry the first connect on its own: bound the whole read.
        return await within(registry.list_instances(
            url, timeout=timeout, auth=operator_nats()), timeout + 1.0)

    return asyncio.run(read())


def status_rows(topo: Topology, found: Sequence[registry.Instance],
                recorded: Sequence[Instance], now: float | None = None) -> list[StatusRow]:
    """The registry's instances, then recorded ones not (yet) registered, then a
    "NOT REGISTERED" line for a service or the gateway that has no instance at all."""
    now = time.time() if now is None else now
    rows = [StatusRow(i.service, i.instance_id, i.addr, http=i.protocol == "http",
                      uptime=format_uptime(now - i.started_at) if i.started_at else "-",
                      breakers=format_breakers(i.breakers), storage=i.storage or "-")
            for i in found]
    keys = {(r.service, r.instance) for r in rows}
    addrs = {r.addr for r in rows}
    for rec in recorded:
        if (rec.service, rec.instance) not in keys and rec.addr not in addrs:
            rows.append(StatusRow(rec.service, rec.instance, rec.addr, http=rec.service == GATEWAY,
                                  uptime="unregistered"))
    have = {r.service for r in rows}
    for name in (*SERVICES, GATEWAY):
        if name not in have:
            rows.append(StatusRow(name, "-", "-", health="NOT REGISTERED"))
    order = {name: n for n, name in enumerate((*SERVICES, GATEWAY))}
    return sorted(rows, key=lambda r: (order.get(r.service, len(order)), r.service, r.instance))


def cmd_status(_args: argparse.Namespace) -> int:
    topo = discover()
    recorded, _ = _recorded(Path(os.environ.get("SHOP_DATA_DIR") or "var"))
    note = ""
    try:
        found = _registry_instances(topo.nats_url, 1.0)
    except Exception as exc:  # nats-py raises several unrelated types here
        found = []
        note = (f"registry not reachable at {topo.nats_url} "
                f"({str(exc) or type(exc).__name__})")
    if not found and not note:
        note = f"registry at {topo.nats_url} is empty"
    if note:
        rows = [StatusRow(i.service, i.instance, i.addr, http=i.service == GATEWAY)
                for i in topo.instances]
    else:
        rows = status_rows(topo, found, recorded)
    with ThreadPoolExecutor(max_workers=16) as pool:  # one slow address must not add up
        healths = list(pool.map(lambda r: _health(r, 1.0), rows))
    if all(h in ("UNREACHABLE", "NOT REGISTERED") for h in healths):
        why = f"{note}; " if note else ""
        raise CliError(f"shop is not running: {why}no instance answered (start it with "
                       "`make run`; set NATS_URL, SHOP_DATA_DIR or <SERVICE>_ADDR if it runs "
                       "elsewhere)")
    if note:
        print(f"shopctl: {note}; showing the configured addresses instead", file=sys.stderr)
    table = [("SERVICE", "INSTANCE", "ADDRESS", "HEALTH", "UPTIME", "BREAKERS", "STORAGE")]
    table += [(r.service, r.instance, r.addr, h, r.uptime, r.breakers, r.storage)
              for r, h in zip(rows, healths, strict=True)]
    _print_table(table)
    return 0 if all(h == "SERVING" for h in healths) else 1


def _print_table(rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def _order_addr(topo: Topology) -> str:
    return next(i.addr for i in topo.instances if i.service == "order")


def cmd_saga(args: argparse.Namespace) -> int:
    words = list(args.words)
    if words[0] == "retry":
        if len(words) != 2:
            raise CliError("usage: shopctl saga retry ORDER_ID")
        return _saga_retry(words[1])
    if len(words) != 1:
        raise CliError("usage: shopctl saga ORDER_ID | shopctl saga retry ORDER_ID")
    args.order_id = words[0]
    return _saga_timeline(args)


def _call_order(rpc: str, request: Any, reply_type: Any, *, order_id: str, timeout: float,
                refused: str = "") -> Any:
    """One OrderService call as the operator; its failures said in words (CliError).
    `refused`: what a FAILED_PRECONDITION means for this call."""
    addr = _order_addr(discover())
    no_proxy = [("grpc.enable_http_proxy", 0)]
    with operator_transport().open_sync_channel(addr, "order", no_proxy) as channel:
        # A bare method handle: the generated stub's .pyi does not pass mypy strict.
        call = channel.unary_unary(
            f"/shop.order.v1.OrderService/{rpc}",
            request_serializer=type(request).SerializeToString,
            response_deserializer=reply_type.FromString,
        )
        try:
            return call(request, timeout=timeout)
        except grpc.RpcError as exc:
            code = exc.code()
            if code == grpc.StatusCode.NOT_FOUND:
                raise CliError(f"order {order_id} not found") from None
            if refused and code == grpc.StatusCode.FAILED_PRECONDITION:
                raise CliError(f"{refused}: {exc.details()}") from None
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise CliError(f"order service not reachable at {addr} "
                               "(is shop running? `make run`)") from None
            raise CliError(f"{rpc} failed: {code.name}: {exc.details()}") from None


def _saga_retry(order_id: str) -> int:
    """RetrySaga: the saga runs again from the step that gave up; prints where it got to
    within the call's time (it goes on in the background after that)."""
    from shop.order.v1 import order_pb2

    resp: order_pb2.RetrySagaResponse = _call_order(
        "RetrySaga", order_pb2.RetrySagaRequest(order_id=order_id),
        order_pb2.RetrySagaResponse, order_id=order_id, timeout=15.0,
        refused="nothing to retry")
    status = order_pb2.OrderStatus.Name(resp.order.status)
    print(f"order {resp.order.id or order_id}: {status} (saga resumed)")
    return 0


def _saga_timeline(args: argparse.Namespace) -> int:
    from shop.order.v1 import order_pb2

    resp: order_pb2.GetSagaHistoryResponse = _call_order(
        "GetSagaHistory", order_pb2.GetSagaHistoryRequest(order_id=args.order_id),
        order_pb2.GetSagaHistoryResponse, order_id=args.order_id, timeout=5.0)
    status = order_pb2.OrderStatus.Name(resp.status)
    print(f"order {resp.order_id or args.order_id}: {status}")
    rows = [("TIME", "STEP", "OUTCOME", "ATTEMPT", "ERROR")]
    for s in resp.steps:
        when = (s.time.ToDatetime(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
                if s.HasField("time") else "-")
        rows.append((when, s.step, s.outcome, str(s.attempt), s.error or ""))
    _print_table(rows)
    return 0


def _inventory_addr(topo: Topology) -> str:
    return next(i.addr for i in topo.instances if i.service == "inventory")


def cmd_inventory(args: argparse.Namespace) -> int:
    """RebuildStock as the operator: a line of totals, then each product that differs.
    Exit 1 when a verify found differences or a rebuild could not fix one."""
    from shop.inventory.v1 import inventory_pb2

    addr = _inventory_addr(discover())
    request = inventory_pb2.RebuildStockRequest(verify_only=args.verify,
                                                from_scratch=args.from_scratch)
    no_proxy = [("grpc.enable_http_proxy", 0)]
    with operator_transport().open_sync_channel(addr, "inventory", no_proxy) as channel:
        call = channel.unary_unary(
            "/shop.inventory.v1.InventoryService/RebuildStock",
            request_serializer=inventory_pb2.RebuildStockRequest.SerializeToString,
            response_deserializer=inventory_pb2.RebuildStockResponse.FromString,
        )
        try:
            resp: inventory_pb2.RebuildStockResponse = call(request, timeout=args.timeout)
        except grpc.RpcError as exc:
            code = exc.code()
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise CliError(f"inventory service not reachable at {addr} within "
                               f"{args.timeout:g} s (is shop running? `make run`)") from None
            raise CliError(f"RebuildStock failed: {code.name}: {exc.details()}") from None
    return print_rebuild(resp, verify=args.verify, from_scratch=args.from_scratch)


def print_rebuild(resp: Any, *, verify: bool, from_scratch: bool) -> int:
    source = "from the first event" if from_scratch else "from snapshots"
    print(f"replayed {resp.products} products, {resp.events} events ({source})")
    if not resp.differences:
        print("no difference")
        return 0
    rows = [("PRODUCT", "SERVED", "EVENTS SAY", "PROBLEM")]
    for d in resp.differences:
        served = (f"{d.served.available}/{d.served.reserved}/{d.served.sold}"
                  if d.HasField("served") else "-")
        replayed = (f"{d.replayed.available}/{d.replayed.reserved}/{d.replayed.sold}"
                    if d.HasField("replayed") else "-")
        rows.append((d.product_id, served, replayed, d.problem))
    _print_table(rows)
    n = len(resp.differences)
    if verify:
        print(f"{n} product{'s' if n != 1 else ''} differ (available/reserved/sold); "
              "`shopctl inventory rebuild` rewrites them")
        return 1
    print(f"rewrote {resp.rewritten} of {n}")
    return 0 if resp.rewritten == n else 1


async def _with_js(url: str, action: str, target: int | str | None) -> int:
    import nats
    from nats.js.errors import NotFoundError

    from services.common import dlq
    from services.common.natsurl import nats_servers

    async def quiet(_exc: Exception) -> None:
        pass  # nats-py logs every failed attempt with a traceback; one line is enough

    try:
        # nats-py keeps retrying the first connect on its own, hence the outer timeout.
        nc = await within(
            nats.connect(nats_servers(url), connect_timeout=2, allow_reconnect=False,
                         max_reconnect_attempts=1, error_cb=quiet,
                         **operator_nats().options()), 4)
    except Exception as exc:  # nats-py raises several unrelated types here
        why = str(exc) or type(exc).__name__
        raise CliError(f"NATS not reachable at {url} (is shop running?): {why}") from None
    try:
        js = nc.jetstream(timeout=5)
        if action == "list":
            letters = await dlq.list_dead_letters(js)
            if not letters:
                print("no dead letters")
                return 0
            rows = [("ID", "TIME", "SUBJECT", "CONSUMER", "EVENT", "REASON")]
            for d in letters:
                when = d.time.strftime("%Y-%m-%d %H:%M:%S") if d.time else "-"
                rows.append((str(d.seq), when, d.subject, d.consumer, d.event_id, d.reason))
            _print_table(rows)
            return 0
        seq: int | str = "all" if target == "all" else int(str(target))
        try:
            count = await dlq.replay(js, seq if isinstance(seq, int) else "all")
        except NotFoundError:
            raise CliError(f"no dead letter with id {seq}") from None
        print(f"replayed {count} dead letter(s)")
        return 0
    except CliError:
        raise
    except Exception as exc:
        raise CliError(f"dlq {action} failed: {type(exc).__name__}: {exc}") from None
    finally:
        await nc.close()


def cmd_dlq(args: argparse.Namespace) -> int:
    url = discover().nats_url
    if args.dlq_cmd == "list":
        return asyncio.run(_with_js(url, "list", None))
    if args.all == (args.id is not None):
        raise CliError("dlq replay: give one ID or --all")
    return asyncio.run(_with_js(url, "replay", "all" if args.all else args.id))


def _mail_dir(given: Path | None) -> Path:
    """--dir, else where `make run` said its catcher stores mails, else <data dir>/mail."""
    if given is not None:
        return given
    data_dir = Path(os.environ.get("SHOP_DATA_DIR") or "var")
    try:
        doc = json.loads((data_dir / "run" / "instances.json").read_text())
        return Path(str(doc["mailcatcher"]["mail_dir"]))
    except (OSError, ValueError, KeyError, TypeError):
        return data_dir / "mail"


def cmd_mail(args: argparse.Namespace) -> int:
    from ops.mailcatcher import MailDir

    maildir = MailDir(_mail_dir(args.dir))
    if args.mail_cmd == "list":
        mails = maildir.list()
        if not mails:
            print(f"no mails in {maildir.root}")
            return 0
        seen: dict[str, str] = {}
        rows = [("ID", "RECEIVED (UTC)", "TO", "SUBJECT", "NOTE")]
        for m in mails:
            first = seen.setdefault(m.message_id, m.id) if m.message_id else m.id
            note = f"repeat of {first}" if first != m.id else ""
            when = dt.datetime.fromtimestamp(m.received_at, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
            rows.append((m.id, when, m.to, m.subject, note))
        _print_table(rows)
        return 0
    try:
        found = maildir.find(args.id)
    except KeyError as exc:
        raise CliError(str(exc.args[0])) from None
    msg = found.message()
    for name in ("From", "To", "Subject", "Date", "Message-ID", "X-Request-Id"):
        if msg.get(name) is not None:
            print(f"{name}: {msg[name]}")
    print(f"File: {found.path}\n")
    part = msg.get_body(("html",) if args.html else ("plain", "html"))
    print(part.get_content().rstrip() if part is not None else "(no text part)")
    return 0


def cmd_trace(args: argparse.Namespace) -> int:
    from ops.tracetree import load_spans, order_traces, render

    path = args.file or Path(os.environ.get("SHOP_DATA_DIR") or "var") / "traces" / "spans.jsonl"
    try:
        spans = load_spans(path)
    except OSError as exc:
        raise CliError(f"no spans at {path} ({exc.strerror}); make run keeps them there"
                       " unless OTEL_EXPORTER_OTLP_ENDPOINT names another collector") from None
    traces = order_traces(spans, args.order_id)
    if not traces:
        raise CliError(f"no spans of order {args.order_id} in {path}")
    for tid in traces:
        print("\n".join(render(spans, tid)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shopctl", description="Operate a running shop.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("status", help="every instance: address, health, breakers"
                   ).set_defaults(func=cmd_status)
    saga = sub.add_parser("saga", help="the saga timeline of an order; `saga retry ORDER_ID`"
                          " resumes one left for manual attention")
    saga.add_argument("words", nargs="+", metavar="[retry] ORDER_ID")
    saga.set_defaults(func=cmd_saga)
    dlq = sub.add_parser("dlq", help="dead letters")
    dsub = dlq.add_subparsers(dest="dlq_cmd", required=True)
    dsub.add_parser("list", help="list dead letters").set_defaults(func=cmd_dlq)
    replay = dsub.add_parser("replay", help="replay one dead letter (ID) or all")
    replay.add_argument("id", nargs="?", type=int)
    replay.add_argument("--all", action="store_true")
    replay.set_defaults(func=cmd_dlq)
    tr = sub.add_parser("trace", help="an order's span tree with durations (spans kept by"
                        " make run's local receiver)")
    tr.add_argument("order_id")
    tr.add_argument("--file", type=Path, default=None,
                    help="the spans file (default: <SHOP_DATA_DIR>/traces/spans.jsonl)")
    tr.set_defaults(func=cmd_trace)
    inv = sub.add_parser("inventory", help="the stock ledger")
    isub = inv.add_subparsers(dest="inventory_cmd", required=True)
    rb = isub.add_parser("rebuild", help="replay every product's stock events and rewrite"
                         " the stock levels that differ (--verify: only print them)")
    rb.add_argument("--verify", action="store_true",
                    help="only report the products whose stock level differs; write nothing")
    rb.add_argument("--from-scratch", action="store_true",
                    help="replay from each stream's first event, not its latest snapshot"
                         " (and check the snapshots too)")
    rb.add_argument("--timeout", type=float, default=600.0,
                    help="seconds to wait for the replay (default 600)")
    rb.set_defaults(func=cmd_inventory)
    mail = sub.add_parser("mail", help="mails caught by the local mail catcher")
    mail.add_argument("--dir", type=Path, default=None,
                      help="the catcher's directory (default: the one make run uses)")
    msub = mail.add_subparsers(dest="mail_cmd", required=True)
    msub.add_parser("list", help="every caught mail, oldest first").set_defaults(func=cmd_mail)
    show = msub.add_parser("show", help="one mail: headers and text")
    show.add_argument("id", help="mail id (or a prefix), notification id or Message-ID")
    show.add_argument("--html", action="store_true", help="print the HTML part instead")
    show.set_defaults(func=cmd_mail)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Every gRPC call presents the operator certificate (<SHOP_DATA_DIR>/pki/operator.*):
    # operator_transport, operator_nats.
    try:
        code: int = args.func(args)
    except (CliError, FileNotFoundError) as exc:  # FileNotFoundError: no certificate
        print(f"shopctl: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
