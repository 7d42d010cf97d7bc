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

# Matches of variable templates remembered per (method, path); cleared when full.
_CACHE_SIZE = 4096


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
        self._paths: list[tuple[str, PathTemplate]] = []
        self._cache: dict[tuple[str, str], Match[T]] = {}
        for method, template, target in routes:
            self._paths.append((method, template))
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
        """The route of (method, path). The returned Match (and its params) may be shared
        between requests of the same path: read it, never change it."""
        key = (method, path)
        target = self._exact.get(key)
        if target is not None:
            return Match(target, {})
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        found = self._match_templates(method, path)
        if found is not None:
            cache = self._cache
            if len(cache) >= _CACHE_SIZE:
                cache.clear()
            cache[key] = found
        return found

    def _match_templates(self, method: str, path: str) -> Match[T] | None:
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

    def allowed_methods(self, path: str) -> list[str]:
        """The methods that serve `path`, sorted: empty means a 404, else a 405 whose
        `Allow` header lists them (RFC 9110 15.5.6)."""
        return sorted({m for m, t in self._paths if t.regex.match(path)})
