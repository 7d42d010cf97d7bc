"""Durable writes per request, read from the services' own /metrics around a timed window.

Two counters say how often a request made the disk sync: `shop_db_commit_duration_seconds`
counts a service's write transactions (each one COMMIT with its fsync, however many units
of work a group commit carried), and `shop_outbox_published_events_total` the events its
relay had acknowledged by JetStream, each stored with an fsync of its own under the
stream's `sync_interval: always`. The PostgreSQL backend does not count its commits, so
there only the publishes are known.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Mapping
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

__all__ = ["COMMITS", "PUBLISHED", "Counts", "per_op", "read_counts", "scrape"]

COMMITS = "shop_db_commit_duration_seconds_count"
PUBLISHED = "shop_outbox_published_events_total"
_WANTED = (COMMITS, PUBLISHED)

# Per process: (commits, publishes).
Counts = dict[str, tuple[float, float]]


def read_counts(text: str) -> tuple[float, float]:
    """(commits, publishes) in one /metrics answer (0 for a counter it does not have)."""
    totals = dict.fromkeys(_WANTED, 0.0)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in totals:
                totals[sample.name] += float(sample.value)
    return totals[COMMITS], totals[PUBLISHED]


def scrape(urls: Mapping[str, str], timeout_s: float = 2.0) -> Counts:
    """Each process's counts; one whose /metrics does not answer is left out (its
    figures would be wrong, not zero)."""
    out: Counts = {}
    for name, url in urls.items():
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as reply:
                out[name] = read_counts(reply.read().decode())
        except (OSError, ValueError):
            continue
    return out


def per_op(before: Counts, after: Counts, ok: int) -> dict[str, Any]:
    """The window's durable writes per successful request, in all and per process
    (processes that wrote nothing are left out of `by_process`)."""
    if ok <= 0:
        return {}
    both = [n for n in after if n in before]
    commits = {n: (after[n][0] - before[n][0]) / ok for n in both}
    published = {n: (after[n][1] - before[n][1]) / ok for n in both}
    return {
        "db_commits": round(sum(commits.values()), 2),
        "jetstream_publishes": round(sum(published.values()), 2),
        "by_process": {n: {"commits": round(commits[n], 2), "publishes": round(published[n], 2)}
                       for n in both if commits[n] or published[n]},
    }
