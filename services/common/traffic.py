"""Traffic management in one configuration: per-RPC deadlines and retries, and weighted
routes between versions of a service.

The file is `proto/traffic.toml` (`SHOP_TRAFFIC` names another):

    [calls]
    "user.GetJwks" = { timeout_s = 2.0, attempts = 3 }   # <service>.<Method>

    [routes]
    payment = { v1 = 90, v2 = 10 }                       # version -> weight

A call rule replaces the caller's cap (`timeout=`, `cap_s`) and the number of attempts
of an idempotent call (still never past the caller's own deadline). A route splits the
calls to a service between the versions its instances registered (`SHOP_VERSION`) by
smooth weighted round-robin (exactly 9 in 10 for 90/10), round-robin inside a version;
versions it does not name get nothing, unless none it names has a healthy instance
(then every instance is used, as without a route).
"""

from __future__ import annotations

import functools
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

TRAFFIC_FILE = Path(__file__).resolve().parents[2] / "proto" / "traffic.toml"

T = TypeVar("T")


class TrafficError(ValueError):
    """The traffic file is malformed."""


@dataclass(frozen=True)
class CallRule:
    timeout_s: float | None = None
    attempts: int | None = None


@dataclass(frozen=True)
class Traffic:
    calls: Mapping[str, CallRule] = field(default_factory=dict)
    routes: Mapping[str, Mapping[str, int]] = field(default_factory=dict)

    def rule(self, service: str, method: str) -> CallRule:
        return self.calls.get(f"{service}.{method}", _NO_RULE)


_NO_RULE = CallRule()


def _number(value: object, where: str, kind: type) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise TrafficError(f"{where}: want a positive number, got {value!r}")
    if kind is int and not isinstance(value, int):
        raise TrafficError(f"{where}: want a whole number, got {value!r}")
    return float(value)


def parse_traffic(text: str) -> Traffic:
    doc = tomllib.loads(text)
    calls: dict[str, CallRule] = {}
    for key, spec in (doc.get("calls") or {}).items():
        service, sep, method = key.partition(".")
        if not sep or not service or not method or not isinstance(spec, dict):
            raise TrafficError(f"calls {key!r}: want '<service>.<Method>' = {{...}}")
        unknown = set(spec) - {"timeout_s", "attempts"}
        if unknown:
            raise TrafficError(f"calls {key!r}: unknown {sorted(unknown)}")
        timeout = spec.get("timeout_s")
        attempts = spec.get("attempts")
        calls[key] = CallRule(
            None if timeout is None else _number(timeout, f"{key}.timeout_s", float),
            None if attempts is None else int(_number(attempts, f"{key}.attempts", int)))
    routes: dict[str, dict[str, int]] = {}
    for service, weights in (doc.get("routes") or {}).items():
        if not isinstance(weights, dict) or not weights:
            raise TrafficError(f"routes {service!r}: want {{ version = weight, ... }}")
        routes[service] = {str(v): int(_number(w, f"{service}.{v}", int))
                           for v, w in weights.items()}
    return Traffic(calls, routes)


@functools.cache
def _load(path: str) -> Traffic:
    return parse_traffic(Path(path).read_text())


def load_traffic(path: Path | None = None) -> Traffic:
    """The traffic configuration in `path` (SHOP_TRAFFIC), else proto/traffic.toml; each
    file is read once. The composition root hands it to discovery and the Downstreams."""
    return _load(str(path or TRAFFIC_FILE))


class WeightedRing(Generic[T]):
    """Smooth weighted round-robin over versions, round-robin inside each (O(versions))."""

    __slots__ = ("_current", "_groups", "_n", "_weights")

    def __init__(self, weights: Mapping[str, int], members: Sequence[tuple[str, T]]) -> None:
        groups: dict[str, list[T]] = {}
        for version, member in members:
            if version in weights:
                groups.setdefault(version, []).append(member)
        self._groups = groups
        self._weights = {v: weights[v] for v in groups}
        self._current = dict.fromkeys(groups, 0)
        self._n = dict.fromkeys(groups, 0)

    def __bool__(self) -> bool:
        return bool(self._groups)

    def pick(self) -> T:
        total = 0
        best = ""
        for version, weight in self._weights.items():
            self._current[version] += weight
            total += weight
            if not best or self._current[version] > self._current[best]:
                best = version
        self._current[best] -= total
        group = self._groups[best]
        self._n[best] += 1
        return group[self._n[best] % len(group)]


__all__ = [
    "TRAFFIC_FILE",
    "CallRule",
    "Traffic",
    "TrafficError",
    "WeightedRing",
    "load_traffic",
    "parse_traffic",
]
