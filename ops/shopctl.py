"""shopctl: the operator command. Talks to the running system over gRPC and NATS.

    shopctl status                 every instance: service, address, health, breakers
    shopctl saga ORDER_ID          the saga timeline of one order
    shopctl dlq list               dead letters
    shopctl dlq replay ID|--all    re-publish dead letters to their original subjects
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc

from ops.process import GATEWAY, env_prefix, grpc_health, http_ok
from services.common.settings import DEFAULT_PORTS, SERVICES

__all__ = ["Instance", "Topology", "discover", "main"]

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


def discover(environ: dict[str, str] | None = None) -> Topology:
    """Where the running instances are. The one place that knows: `<SERVICE>_ADDR`
    or the default ports, plus what `make run` recorded in
    <SHOP_DATA_DIR>/run/instances.json (scaled instances, non-default ports).
    The NATS KV registry will replace the file here, and only here."""
    env = dict(os.environ if environ is None else environ)
    data_dir = Path(env.get("SHOP_DATA_DIR") or "var")
    recorded: list[Instance] = []
    nats_url = env.get("NATS_URL", "")
    try:
        doc = json.loads((data_dir / "run" / "instances.json").read_text())
        recorded = [Instance(str(i["service"]), str(i["instance"]), str(i["addr"]))
                    for i in doc.get("instances", [])]
        nats_url = nats_url or str(doc.get("nats_url") or "")
    except (OSError, ValueError, KeyError, TypeError):
        pass  # not started by `make run` here: fall back to env and defaults
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


def _health(inst: Instance, timeout: float) -> str:
    if inst.service == GATEWAY:
        return "SERVING" if http_ok(f"http://{inst.addr}/healthz", timeout) else "UNREACHABLE"
    return grpc_health(inst.addr, timeout)


def breaker_states(inst: Instance) -> str:
    """Circuit-breaker states of one instance. Services keep them in-process
    (services.common.breakers) and no RPC exposes them yet, so "-"."""
    return "-"


def cmd_status(_args: argparse.Namespace) -> int:
    topo = discover()
    with ThreadPoolExecutor(max_workers=16) as pool:  # one slow address must not add up
        healths = list(pool.map(lambda i: _health(i, 1.0), topo.instances))
    if all(h == "UNREACHABLE" for h in healths):
        raise CliError("shop is not running: no instance answered (start it with `make run`; "
                       "set SHOP_DATA_DIR or <SERVICE>_ADDR if it runs elsewhere)")
    rows = [("SERVICE", "INSTANCE", "ADDRESS", "HEALTH", "BREAKERS")]
    rows += [(i.service, i.instance, i.addr, h, breaker_states(i))
             for i, h in zip(topo.instances, healths, strict=True)]
    _print_table(rows)
    return 0 if all(h == "SERVING" for h in healths) else 1


def _print_table(rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def _order_addr(topo: Topology) -> str:
    return next(i.addr for i in topo.instances if i.service == "order")


def cmd_saga(args: argparse.Namespace) -> int:
    from shop.order.v1 import order_pb2

    addr = _order_addr(discover())
    with grpc.insecure_channel(addr, options=[("grpc.enable_http_proxy", 0)]) as channel:
        # A bare method handle: the generated stub's .pyi does not pass mypy strict.
        get_history = channel.unary_unary(
            "/shop.order.v1.OrderService/GetSagaHistory",
            request_serializer=order_pb2.GetSagaHistoryRequest.SerializeToString,
            response_deserializer=order_pb2.GetSagaHistoryResponse.FromString,
        )
        try:
            resp: order_pb2.GetSagaHistoryResponse = get_history(
                order_pb2.GetSagaHistoryRequest(order_id=args.order_id), timeout=5.0)
        except grpc.RpcError as exc:
            code = exc.code()
            if code == grpc.StatusCode.NOT_FOUND:
                raise CliError(f"order {args.order_id} not found") from None
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise CliError(f"order service not reachable at {addr} "
                               "(is shop running? `make run`)") from None
            raise CliError(f"GetSagaHistory failed: {code.name}: {exc.details()}") from None
    status = order_pb2.OrderStatus.Name(resp.status)
    print(f"order {resp.order_id or args.order_id}: {status}")
    rows = [("TIME", "STEP", "OUTCOME", "ATTEMPT", "ERROR")]
    for s in resp.steps:
        when = (s.time.ToDatetime(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
                if s.HasField("time") else "-")
        rows.append((when, s.step, s.outcome, str(s.attempt), s.error or ""))
    _print_table(rows)
    return 0


async def _with_js(url: str, action: str, target: int | str | None) -> int:
    import nats
    from nats.js.errors import NotFoundError

    from services.common import dlq

    async def quiet(_exc: Exception) -> None:
        pass  # nats-py logs every failed attempt with a traceback; one line is enough

    try:
        # nats-py keeps retrying the first connect on its own, hence the outer timeout.
        nc = await asyncio.wait_for(
            nats.connect(url, connect_timeout=2, allow_reconnect=False,
                         max_reconnect_attempts=1, error_cb=quiet), timeout=4)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shopctl", description="Operate a running shop.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("status", help="every instance: address, health, breakers"
                   ).set_defaults(func=cmd_status)
    saga = sub.add_parser("saga", help="the saga timeline of an order")
    saga.add_argument("order_id")
    saga.set_defaults(func=cmd_saga)
    dlq = sub.add_parser("dlq", help="dead letters")
    dsub = dlq.add_subparsers(dest="dlq_cmd", required=True)
    dsub.add_parser("list", help="list dead letters").set_defaults(func=cmd_dlq)
    replay = dsub.add_parser("replay", help="replay one dead letter (ID) or all")
    replay.add_argument("id", nargs="?", type=int)
    replay.add_argument("--all", action="store_true")
    replay.set_defaults(func=cmd_dlq)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except CliError as exc:
        print(f"shopctl: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
