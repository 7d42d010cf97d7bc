"""The call policy: which identities may call which RPC (default deny).

It lives in one declarative file beside the contracts, `proto/call_policy.toml`
(`SHOP_CALL_POLICY` names another). Keys are `<package>.<Service>/<Method>`, values
lists of identities or `@group`s from its `[groups]` table.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

POLICY_FILE = Path(__file__).resolve().parents[2] / "proto" / "call_policy.toml"


class PolicyError(ValueError):
    """The policy file is malformed (unknown group, wrong shape)."""


@dataclass(frozen=True)
class CallPolicy:
    """`rules["/shop.order.v1.OrderService/ListOrders"]` -> the identities allowed."""

    rules: Mapping[str, frozenset[str]]

    def allowed(self, method: str) -> frozenset[str]:
        """Who may call `method` (a grpc method path `/pkg.Service/Method`); empty: nobody."""
        return self.rules.get(method, frozenset())

    def permits(self, identity: str, method: str) -> bool:
        return identity in self.allowed(method)


def _expand(names: object, groups: Mapping[str, object], where: str,
            seen: tuple[str, ...] = ()) -> set[str]:
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise PolicyError(f"{where}: want a list of identities")
    out: set[str] = set()
    for name in names:
        if not name.startswith("@"):
            out.add(name)
            continue
        group = name[1:]
        if group not in groups:
            raise PolicyError(f"{where}: unknown group {name!r}")
        if group in seen:
            raise PolicyError(f"{where}: group {name!r} contains itself")
        out |= _expand(groups[group], groups, f"group {name}", (*seen, group))
    return out


def parse_policy(text: str) -> CallPolicy:
    doc = tomllib.loads(text)
    groups = doc.get("groups", {})
    calls = doc.get("calls", {})
    if not isinstance(groups, dict) or not isinstance(calls, dict):
        raise PolicyError("the policy needs [groups] and [calls] tables")
    rules: dict[str, frozenset[str]] = {}
    for key, names in calls.items():
        service, sep, method = key.partition("/")
        if not sep or not service or not method or "/" in method:
            raise PolicyError(f"{key!r}: want '<package>.<Service>/<Method>'")
        rules[f"/{key}"] = frozenset(_expand(names, groups, key))
    return CallPolicy(rules)


def load_policy(path: Path | None = None) -> CallPolicy:
    """The policy in `path` (SHOP_CALL_POLICY), else proto/call_policy.toml."""
    return parse_policy((path or POLICY_FILE).read_text())


__all__ = ["POLICY_FILE", "CallPolicy", "PolicyError", "load_policy", "parse_policy"]
