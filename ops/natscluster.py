"""A JetStream cluster of embedded nats-servers on loopback: `make run NATS_CLUSTER=3`.

Node i (1-based) keeps its store under `<data dir>/node-<i>/`, is named
`shop-nats-<i>`, serves clients on `client_ports[i-1]` and routes on `route_ports[i-1]`.
Every node runs the same config as a lone server (JetStream file storage,
`sync_interval: always`) plus a `cluster` block with routes to all nodes. The nodes are
spawned together and waited for together: JetStream answers only once a majority has met
and elected a meta leader, so waiting for one node before spawning the next never ends.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ops.natsd import NatsServer

__all__ = ["CLUSTER_NAME", "DEFAULT_ROUTE_PORT", "ClusterNode", "ClusterRole", "NatsCluster",
           "cluster_size", "embedded_nats", "node_name"]

CLUSTER_NAME = "shop"
DEFAULT_ROUTE_PORT = 6222  # nats-server's own default cluster port


@dataclass(frozen=True)
class ClusterRole:
    """One node's place in a JetStream cluster: its unique name, its route port and the
    route URLs of every node (its own included: nats-server ignores a route to itself)."""

    cluster: str
    server_name: str
    route_port: int
    routes: tuple[str, ...]

    def conf(self, host: str) -> str:
        routes = "\n".join(f'    "{r}"' for r in self.routes)
        return f"""server_name: "{self.server_name}"
cluster {{
  name: "{self.cluster}"
  listen: "{host}:{self.route_port}"
  routes: [
{routes}
  ]
}}
"""


class ClusterNode(NatsServer):
    """A NatsServer whose config also names it and routes it to the other nodes; the rest
    of its config (store, fsync, security) is the lone server's."""

    def __init__(self, data_dir: str | os.PathLike[str], role: ClusterRole, *, port: int,
                 host: str = "127.0.0.1", ready_timeout_s: float = 30.0) -> None:
        super().__init__(data_dir, port=port, host=host, ready_timeout_s=ready_timeout_s)
        self.role = role

    def _write_config(self) -> None:
        super()._write_config()
        with self.conf_path.open("a") as conf:
            conf.write(self.role.conf(self.host))


def node_name(i: int) -> str:
    return f"shop-nats-{i}"


def cluster_size(raw: str) -> int:
    """NATS_CLUSTER: how many embedded nodes (default 1; 3 for a cluster that survives a
    node's loss). Two would stop JetStream when either dies: refused."""
    raw = raw.strip() or "1"
    if not raw.isdigit() or int(raw) < 1 or int(raw) == 2 or int(raw) > 5:
        raise ValueError(f"NATS_CLUSTER must be 1, 3, 4 or 5 nodes, got {raw!r} "
                         "(2 nodes have no majority once one is gone)")
    return int(raw)


def embedded_nats(data_dir: Path, *, port: int, nodes: int,
                  route_port: int = DEFAULT_ROUTE_PORT) -> NatsServer | NatsCluster:
    """`make run`'s NATS: one server on `port` under `data_dir`, or `nodes` clustered
    ones on client ports port..port+nodes-1 and route ports route_port.. ."""
    if nodes == 1:
        return NatsServer(data_dir, port=port)
    return NatsCluster(data_dir, [port + i for i in range(nodes)],
                       [route_port + i for i in range(nodes)])


class NatsCluster:
    """`len(client_ports)` clustered nodes; `nodes[i]` are plain NatsServers (kill one
    with `.kill()`, bring it back with `.start()`: same ports, same store)."""

    def __init__(self, data_dir: str | Path, client_ports: Sequence[int],
                 route_ports: Sequence[int], *, host: str = "127.0.0.1",
                 ready_timeout_s: float = 30.0) -> None:
        if len(client_ports) != len(route_ports) or not client_ports:
            raise ValueError("one client port and one route port per node")
        if any(p <= 0 for p in (*client_ports, *route_ports)):
            raise ValueError("cluster nodes need fixed ports (routes name them)")
        root = Path(data_dir)
        routes = tuple(f"nats-route://{host}:{p}" for p in route_ports)
        self.ready_in_s = 0.0
        self._retry_at: dict[str, float] = {}  # node -> when a dead node is spawned again
        self._delay: dict[str, float] = {}  # node -> its next back-off
        self.nodes: list[ClusterNode] = [
            ClusterNode(root / f"node-{i}", ClusterRole(CLUSTER_NAME, node_name(i), route, routes),
                        port=client, host=host, ready_timeout_s=ready_timeout_s)
            for i, (client, route) in enumerate(zip(client_ports, route_ports, strict=True), 1)]

    @property
    def url(self) -> str:
        """Every node's client URL, comma-separated (what NATS_URL takes)."""
        return ",".join(n.url for n in self.nodes)

    @property
    def pid(self) -> int:
        """The first live node's pid."""
        for node in self.nodes:
            if node.running:
                return node.pid
        raise RuntimeError("no cluster node running")

    def reload(self) -> None:
        """Every live node re-reads its configuration and certificates (after a renewal)."""
        for node in self.nodes:
            node.reload()

    @property
    def pids(self) -> list[int]:
        return [n.pid for n in self.nodes if n.running]

    def node(self, server_name: str) -> ClusterNode:
        for node in self.nodes:
            if node.role.server_name == server_name:
                return node
        raise KeyError(server_name)

    def spawn(self) -> NatsCluster:
        for node in self.nodes:
            node.spawn()
        return self

    def wait_ready(self) -> NatsCluster:
        """Every node answers JetStream (so the meta leader is elected); stops all and
        raises if one does not in time."""
        t0 = time.monotonic()
        try:
            for node in self.nodes:
                node.wait_ready()
        except BaseException:
            self.stop()
            raise
        self.ready_in_s = time.monotonic() - t0
        return self

    def start(self) -> NatsCluster:
        return self.spawn().wait_ready()

    def revive(self, now: float, *, backoff_s: float = 1.0, cap_s: float = 10.0) -> list[str]:
        """Spawn again every node that died (a StatefulSet would), on its port and store;
        the names of those spawned. A node dying again waits twice as long (up to `cap_s`)
        until it has stayed up a minute. It rejoins and catches up from the leaders."""
        revived = []
        for node in self.nodes:
            name = node.role.server_name
            if node.running:
                if now - self._retry_at.get(name, now) > 60.0:
                    self._delay.pop(name, None)
                continue
            if now < self._retry_at.get(name, 0.0):
                continue
            delay = self._delay.get(name, backoff_s)
            self._retry_at[name] = now + delay
            self._delay[name] = min(delay * 2, cap_s)
            node.kill()  # reaps the dead process, closes its log
            node.spawn()
            revived.append(name)
        return revived

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> NatsCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
