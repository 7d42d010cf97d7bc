"""Who the client is: the peer address, or what a trusted proxy says it forwarded for.

`Forwarded` (RFC 7239) and `X-Forwarded-For` are believed only when the peer is one of
`GATEWAY_TRUSTED_PROXIES` (addresses or CIDRs, comma-separated; none by default). The
list is then read from the right, skipping the trusted hops: the first address that is
not a trusted proxy is the client — a client cannot choose it by sending its own header,
since whatever it sends ends up on the left of what the proxies append.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_networks(spec: str) -> tuple[Network, ...]:
    """`"10.0.0.0/8, 127.0.0.1"` -> networks; ValueError names an entry that is not one."""
    nets: list[Network] = []
    for raw in spec.split(","):
        entry = raw.strip()
        if not entry:
            continue
        try:
            nets.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise ValueError(f"not an address or CIDR: {entry!r}") from None
    return tuple(nets)


def _address(text: str) -> Address | None:
    text = text.strip().strip('"')
    if text.startswith("["):  # [v6]:port or [v6]
        text = text[1 : text.find("]")] if "]" in text else ""
    elif text.count(":") == 1:  # v4:port
        text = text.split(":", 1)[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _forwarded_for(value: str) -> list[str]:
    """The `for=` of each element of a Forwarded header, in order."""
    out: list[str] = []
    for element in value.split(","):
        node = ""
        for pair in element.split(";"):
            key, _, val = pair.partition("=")
            if key.strip().lower() == "for":
                node = val.strip()
        out.append(node)
    return out


class ClientAddress:
    """`resolve(peer, forwarded, x_forwarded_for)` -> the address to limit by."""

    def __init__(self, trusted: Iterable[Network] = ()) -> None:
        self.trusted = tuple(trusted)

    def is_trusted(self, addr: Address | None) -> bool:
        return addr is not None and any(addr in net for net in self.trusted)

    def resolve(self, peer: str, forwarded: str = "", x_forwarded_for: str = "") -> str:
        if not self.trusted or not (forwarded or x_forwarded_for):
            return peer
        if not self.is_trusted(_address(peer)):
            return peer
        hops = _forwarded_for(forwarded) if forwarded else x_forwarded_for.split(",")
        for hop in reversed(hops):
            addr = _address(hop)
            if addr is None:
                # "unknown", an obfuscated node, garbage: nothing to the left of it can be
                # told apart from what the client wrote, so the last good hop counts.
                return peer
            if not self.is_trusted(addr):
                return str(addr)
            peer = str(addr)
        return peer  # every hop is a trusted proxy: the leftmost one
