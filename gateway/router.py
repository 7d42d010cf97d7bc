"""Request path -> route, from a table precompiled at start-up.

Literal templates are found by one dict lookup on (method, path); the others are tried
per (method, segment count), most specific first (verb, then more literal segments).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

from gateway.rules import PathTemplate

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Match(Generic[T]):
    target: T
    params: dict[str, str]  # variable name (dotted field path) -> value


def _specificity(template: PathTemplate) -> tuple[int, int, int]:
    return (1 if template.verb else 0, template.literal_count, len(template.segments))


class Router(Generic[T]):
    """Routes (method, template) -> target; `match` answers a request in O(1) or O(k)."""

    def __init__(self, routes: Iterable[tuple[str, PathTemplate, T]]) -> None:
        self._exact: dict[tuple[str, str], T] = {}
        self._by_count: dict[tuple[str, int], list[tuple[PathTemplate, T]]] = {}
        self._variable: dict[str, list[tuple[PathTemplate, T]]] = {}
        self._paths: list[PathTemplate] = []
        for method, template, target in routes:
            self._paths.append(template)
            if template.literal:
                self._exact[(method, template.raw)] = target
            elif template.fixed_length:
                self._by_count.setdefault((method, len(template.segments)), []).append(
                    (template, target)
                )
            else:
                self._variable.setdefault(method, []).append((template, target))
        for table in (self._by_count, self._variable):
            for entries in table.values():
                entries.sort(key=lambda e: _specificity(e[0]), reverse=True)

    def match(self, method: str, path: str) -> Match[T] | None:
        target = self._exact.get((method, path))
        if target is not None:
            return Match(target, {})
        count = path.count("/")
        for table_entries in (self._by_count.get((method, count)), self._variable.get(method)):
            if not table_entries:
                continue
            for template, tgt in table_entries:
                m = template.regex.match(path)
                if m is not None:
                    groups = m.groupdict()
                    return Match(tgt, {v.name: groups[v.group] for v in template.variables})
        return None

    def path_exists(self, path: str) -> bool:
        """True when some method serves `path` (a 405 rather than a 404)."""
        return any(t.regex.match(path) for t in self._paths)
