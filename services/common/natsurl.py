"""`NATS_URL` as a list of servers, and how many copies JetStream keeps of shop's data.

`NATS_URL` is one URL or a comma-separated list (`nats://a:4222,nats://b:4222`): every
client gets the whole list, so it can start and reconnect through any live node.

Streams and the registry bucket keep `SHOP_NATS_REPLICAS` copies; unset (or 0) it is
min(3, number of servers in NATS_URL): 1 on one node, 3 on a cluster of three or more
(R3 survives one node's loss; R5 would survive two but halves publish speed again).
Stdlib only: the `make run` supervisor imports it before nats-py.
"""

from __future__ import annotations

__all__ = ["MAX_AUTO_REPLICAS", "nats_servers", "stream_replicas"]

MAX_AUTO_REPLICAS = 3


def nats_servers(url: str) -> list[str]:
    """The servers of a NATS_URL, in order, blanks dropped: `"a, b"` -> `["a", "b"]`."""
    return [part.strip() for part in url.split(",") if part.strip()]


def stream_replicas(url: str, configured: int = 0) -> int:
    """`configured` (SHOP_NATS_REPLICAS, 1..5, checked by the settings), else (0)
    min(3, servers named in `url`)."""
    if configured:
        return configured
    return max(1, min(MAX_AUTO_REPLICAS, len(nats_servers(url))))
