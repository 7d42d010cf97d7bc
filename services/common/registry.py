"""Service registry: every instance's address in the NATS KV bucket `shop_registry`.

Key `<service>.<instance-id>`, value JSON {service, instance, addr, version, started_at,
pid, breakers, protocol}. An instance puts its key once serving, refreshes it every TTL/3 (and at
once when one of its circuit breakers changes state), and deletes it on a graceful stop;
a killed instance's key expires after the bucket's TTL (max age), and the server then
leaves a MaxAge marker that watchers see as a purge.

    link = RegistryLink(settings.nats_url, name=settings.instance_id, auth=auth)
    link.start()
    reg = Registration(link, instance, breakers=breakers.states)  # refreshed in the background
    reg.start()
    ...
    await reg.stop()                         # deletes the key
    await link.close()

Nothing here ever raises into a service: NATS being down only delays registration.
`list_instances(nats_url, auth=...)` is the read side for `shopctl status`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import nats
from nats.aio.client import Client
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import BucketNotFoundError, KeyValueLimitMarkerTTLNotSupportedError
from nats.js.kv import KeyValue

from services.common.cancellation import cancel_and_wait, raise_if_cancelled, within
from services.common.natsauth import NatsAuth
from services.common.natsurl import nats_servers, stream_replicas

__all__ = [
    "BUCKET",
    "Instance",
    "Registration",
    "RegistryLink",
    "list_instances",
    "open_bucket",
]

log = logging.getLogger("shop.registry")

BUCKET = "shop_registry"
DEFAULT_TTL_S = 10.0
_KEY_UNSAFE = re.compile(r"[^-/_=a-zA-Z0-9]")


def key_part(text: str) -> str:
    """`text` made safe for a KV key token (no dots, only the allowed characters)."""
    return _KEY_UNSAFE.sub("_", text) or "_"


@dataclass(frozen=True)
class Instance:
    """One registered instance, as stored in (and read back from) the bucket."""

    service: str
    instance_id: str
    addr: str
    version: str = ""
    started_at: float = 0.0
    pid: int = 0
    breakers: Mapping[str, str] = field(default_factory=dict)
    # "grpc" (a service; discovery routes calls to it) or "http" (the gateway: listed by
    # `shopctl status`, never a call target).
    protocol: str = "grpc"
    # The storage backend ("sqlite", "postgres"); "" for a process without one.
    storage: str = ""

    @property
    def key(self) -> str:
        return f"{key_part(self.service)}.{key_part(self.instance_id)}"

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "service": self.service,
                "instance": self.instance_id,
                "addr": self.addr,
                "version": self.version,
                "started_at": self.started_at,
                "pid": self.pid,
                "breakers": dict(self.breakers),
                "protocol": self.protocol,
                "storage": self.storage,
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_entry(cls, key: str, value: bytes | None) -> Instance | None:
        """The instance a KV entry describes; None for a malformed one."""
        if not value:
            return None
        try:
            data = json.loads(value)
        except ValueError:
            return None
        if not isinstance(data, dict) or not isinstance(data.get("addr"), str):
            return None
        service, _, inst = key.partition(".")
        breakers = data.get("breakers")
        try:
            return cls(
                service=str(data.get("service") or service),
                instance_id=str(data.get("instance") or inst),
                addr=data["addr"],
                version=str(data.get("version", "")),
                started_at=float(data.get("started_at", 0.0)),
                pid=int(data.get("pid", 0)),
                breakers={str(k): str(v) for k, v in breakers.items()}
                if isinstance(breakers, dict)
                else {},
                protocol=str(data.get("protocol") or "grpc"),
                storage=str(data.get("storage") or ""),
            )
        except (TypeError, ValueError):
            return None


async def _connect(url: str, *, name: str, auth: NatsAuth,
                   connect_timeout: float = 2.0) -> Client:
    """Connect, retrying (also the first connect) and reconnecting forever.

    Logs one warning per outage, not one line per attempt."""
    outage = {"warned": False}

    async def on_error(e: Exception) -> None:
        if not outage["warned"]:
            outage["warned"] = True
            log.warning(
                "registry: NATS not reachable, retrying", extra={"url": url, "error": repr(e)}
            )

    async def on_connected() -> None:
        if outage["warned"]:
            log.info("registry: NATS reachable again", extra={"url": url})
        outage["warned"] = False

    return await nats.connect(
        nats_servers(url),
        name=name,
        allow_reconnect=True,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        connect_timeout=connect_timeout,
        error_cb=on_error,
        reconnected_cb=on_connected,
        **auth.options(),  # TLS as this identity (SHOP_MTLS)
    )


async def open_bucket(nc: Client, *, ttl_s: float, create: bool = True,
                      replicas: int = 1) -> KeyValue:
    """The registry bucket, created (memory storage, history 1, max age `ttl_s`, `replicas`
    copies on a cluster) if absent.

    Safe when instances race; an existing bucket keeps its own TTL.
    """
    js = nc.jetstream(timeout=2.0)
    try:
        return await js.key_value(BUCKET)
    except BucketNotFoundError:
        if not create:
            raise
    config = KeyValueConfig(
        bucket=BUCKET,
        history=1,
        ttl=ttl_s,
        storage=StorageType.MEMORY,
        replicas=replicas,
        description="shop service registry: <service>.<instance> -> address",
        # nats-server >= 2.11 leaves a marker when a key ages out, so watchers see it go.
        limit_marker_ttl=1.0,
    )
    try:
        return await js.create_key_value(config)
    except KeyValueLimitMarkerTTLNotSupportedError:
        return await js.create_key_value(config.evolve(limit_marker_ttl=None))
    except Exception:
        # Another instance created it first (maybe with another TTL): use theirs.
        return await js.key_value(BUCKET)


async def bucket_ttl(kv: KeyValue, default: float) -> float:
    try:
        ttl = (await kv.status()).ttl
    except Exception:
        return default
    return ttl if ttl else default


class RegistryLink:
    """The process's NATS connection for the registry, made in the background.

    `kv()` waits until the bucket is open; `reopen()` after an error opens it again
    (a NATS restart loses the memory-stored bucket; the next put re-creates it).
    """

    def __init__(self, url: str, *, name: str, auth: NatsAuth, ttl_s: float = DEFAULT_TTL_S,
                 replicas: int = 0) -> None:
        self.url = url
        self.name = name
        self.auth = auth
        self.ttl_s = ttl_s  # SHOP_REGISTRY_TTL_S
        self.replicas = replicas  # SHOP_NATS_REPLICAS (0: from the servers in `url`)
        self._nc: Client | None = None
        self._kv: KeyValue | None = None
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._reopening: asyncio.Lock | None = None

    @property
    def kv_now(self) -> KeyValue | None:
        return self._kv

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._connect_loop(), name="registry-connect")

    async def wait_ready(self, timeout: float) -> bool:  # noqa: ASYNC109 - a plain wait bound
        self.start()
        with contextlib.suppress(TimeoutError):
            await within(self._ready.wait(), timeout)
        return self._ready.is_set()

    async def kv(self) -> KeyValue:
        self.start()
        await self._ready.wait()
        assert self._kv is not None
        return self._kv

    async def _connect_loop(self) -> None:
        pause = 0.2
        while self._nc is None:
            try:
                self._nc = await _connect(self.url, name=f"{self.name}-registry",
                                          auth=self.auth)
            except Exception as err:  # a bad URL, ...: nats-py retries the rest itself
                log.warning("registry: cannot connect", extra={"url": self.url, "error": repr(err)})
                await asyncio.sleep(pause)
                pause = min(pause * 2, 5.0)
        await self._open_loop()

    async def _open_loop(self) -> None:
        assert self._nc is not None
        pause = 0.2
        while True:
            try:
                self._kv = await open_bucket(self._nc, ttl_s=self.ttl_s,
                                             replicas=stream_replicas(self.url, self.replicas))
                self._ready.set()
                return
            except Exception as err:
                log.debug("registry: cannot open bucket yet", extra={"error": repr(err)})
                await asyncio.sleep(pause)
                pause = min(pause * 2, 5.0)

    async def reopen(self) -> KeyValue:
        """Open (or re-create) the bucket again after an error."""
        if self._reopening is None:
            self._reopening = asyncio.Lock()
        async with self._reopening:
            await self.kv()
            await self._open_loop()
            assert self._kv is not None
            return self._kv

    async def close(self) -> None:
        if self._task is not None:
            await cancel_and_wait([self._task])
        if self._nc is not None and not self._nc.is_closed:
            with contextlib.suppress(Exception):
                await self._nc.close()
        self._nc = None
        self._kv = None


class Registration:
    """Keeps one instance's key in the bucket until `stop()` deletes it."""

    def __init__(
        self,
        link: RegistryLink,
        instance: Instance,
        *,
        breakers: Callable[[], Mapping[str, str]],
    ) -> None:
        self.link = link
        self.instance = instance
        self._breakers = breakers
        self._task: asyncio.Task[None] | None = None
        self.registered = asyncio.Event()  # set after the first successful put
        self.puts = 0

    @property
    def key(self) -> str:
        return self.instance.key

    def value(self) -> bytes:
        states = self._breakers()
        inst = self.instance
        if dict(states) != dict(inst.breakers):
            inst = self.instance = replace(inst, breakers=dict(states))
        return inst.to_json()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="registry-refresh")

    async def _run(self) -> None:
        kv = await self.link.kv()
        interval = await bucket_ttl(kv, self.link.ttl_s) / 3
        tick = min(1.0, interval)
        last_put = 0.0
        last_breakers: dict[str, str] | None = None
        failing = False
        while True:
            states = dict(self._breakers())
            now = time.monotonic()
            if now - last_put >= interval or states != last_breakers:
                try:
                    await within(kv.put(self.key, self.value()), 2.0)
                except asyncio.CancelledError:
                    raise
                except Exception as err:
                    (log.debug if failing else log.warning)(
                        "registry: refresh failed, retrying",
                        extra={"key": self.key, "error": repr(err)},
                    )
                    failing = True
                    try:
                        kv = await within(self.link.reopen(), interval)
                    except (TimeoutError, Exception):
                        await asyncio.sleep(min(1.0, interval))
                    continue
                raise_if_cancelled()  # kv.put's own wait_for can swallow our cancel
                if not self.registered.is_set() or failing:
                    log.info("registered", extra={"key": self.key, "addr": self.instance.addr})
                failing = False
                self.registered.set()
                self.puts += 1
                last_put = now
                last_breakers = states
            await asyncio.sleep(tick)

    async def stop(self, timeout: float = 2.0) -> bool:  # noqa: ASYNC109 - a plain bound
        """Stop refreshing and delete the key; True if it was deleted."""
        if self._task is not None:
            await cancel_and_wait([self._task], max(timeout, 0.1))
            self._task = None
        kv = self.link.kv_now
        if kv is None or not self.registered.is_set():
            return False
        try:
            await within(kv.delete(self.key), timeout)
        except Exception as err:
            log.warning(
                "registry: deregistration failed (the key will expire)",
                extra={"key": self.key, "error": repr(err)},
            )
            return False
        log.info("deregistered", extra={"key": self.key})
        return True


async def read_all(kv: KeyValue, *, timeout: float = 2.0) -> list[tuple[str, Instance]]:  # noqa: ASYNC109
    """Every live entry of the bucket (deleted keys left out), as (key, instance)."""
    watcher: Any = await kv.watchall(ignore_deletes=True)
    out: list[tuple[str, Instance]] = []
    try:
        while True:
            entry: Any = await watcher.updates(timeout=timeout)
            if entry is None:
                break
            inst = Instance.from_entry(entry.key, entry.value)
            if inst is not None:
                out.append((entry.key, inst))
    finally:
        with contextlib.suppress(Exception):
            await watcher.stop()
    return out


async def list_instances(nats_url: str, *, auth: NatsAuth, timeout: float = 3.0,  # noqa: ASYNC109
                         ttl_s: float = DEFAULT_TTL_S) -> list[Instance]:
    """Every registered instance, sorted by service then instance id ([] without a bucket).

    Each carries its process's breaker states (`breakers`, downstream -> state) as of its
    last refresh. Raises on an unreachable NATS.
    """

    async def quiet(_err: Exception) -> None:
        pass  # nats-py's default logs a traceback per failed attempt; the raise says it

    nc = await nats.connect(
        nats_servers(nats_url),
        connect_timeout=timeout,
        max_reconnect_attempts=0,
        allow_reconnect=False,
        name="shop-registry-reader",
        error_cb=quiet,
        **auth.options(),  # TLS as this identity (SHOP_MTLS)
    )
    try:
        try:
            kv = await open_bucket(nc, ttl_s=ttl_s, create=False)
        except BucketNotFoundError:
            return []
        found = [inst for _, inst in await read_all(kv, timeout=timeout)]
    finally:
        await nc.close()
    return sorted(found, key=lambda i: (i.service, i.instance_id))
