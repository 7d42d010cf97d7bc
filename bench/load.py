"""HTTP load: `wrk` when installed (C, cheap per request), else bench.loadgen.

Either way the load runs in its own process, with a warm-up before the timed window.
SHOP_BENCH_LOADER=python forces our own client, =wrk requires wrk.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bench import durable
from bench.procs import cpu_seconds
from bench.stats import Measured

__all__ = ["http_load", "http_load_cpu", "loader_name"]

_WRK_LUA = r"""
wrk.method = "%(method)s"
wrk.body = [==[%(body)s]==]
%(headers)s
local threads = {}
function setup(thread) table.insert(threads, thread) end
%(response)s
function done(summary, latency, requests)
  local parts = {}
  local good = 0
  for _, t in ipairs(threads) do
    local s = t:get("statuses")
    if s then
      for k, v in pairs(s) do parts[k] = (parts[k] or 0) + v end
    end
    good = good + (t:get("matched") or 0)
  end
  local st = {}
  for k, v in pairs(parts) do table.insert(st, string.format('"%%d": %%d', k, v)) end
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %%d, "duration_us": %%d, "p50_us": %%f, "p99_us": %%f, ' ..
    '"connect": %%d, "read": %%d, "write": %%d, "status": %%d, "timeout": %%d, ' ..
    '"matched": %%d, "statuses": {%%s}}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect, e.read, e.write, e.status, e.timeout, good, table.concat(st, ", ")))
end
"""

# Defining response() makes wrk hand every body to Lua, which costs a little; it is
# only used where a 2xx alone does not prove success (201 = order CONFIRMED; a dashboard
# answered with fallbacks is a 200 naming its degraded parts).
_RESPONSE_FN = """
local ok_status = %(ok_status)d
local ok_body = [==[%(ok_body)s]==]
function init(args) statuses = {}; matched = 0 end
function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  local good = status == ok_status or (ok_status == 0 and status >= 200 and status < 400)
  if good and (ok_body == "" or string.find(body, ok_body, 1, true)) then
    matched = matched + 1
  end
end
"""


def loader_name(seconds: float = 1.0) -> str:
    """wrk if installed and the window is whole seconds (wrk's -d takes no fractions;
    smoke runs are shorter), else our own client."""
    forced = os.environ.get("SHOP_BENCH_LOADER", "").strip().lower()
    if forced == "python":
        return "python-asyncio"
    if forced == "wrk" or (shutil.which("wrk") and seconds >= 1.0):
        return "wrk"
    return "python-asyncio"


def http_load(url: str, *, method: str = "GET", body: str = "",
              headers: Mapping[str, str] | None = None, connections: int = 64,
              seconds: float = 5.0, warmup_s: float = 1.0,
              ok_status: int | None = None, ok_body: str = "") -> Measured:
    """Load `url` for `warmup_s` (discarded) then `seconds` (measured).

    `ok_status`: only this status counts as a success (else any 2xx/3xx);
    `ok_body`: a success must also contain this text."""
    hdrs = dict(headers or {})
    if body:
        hdrs.setdefault("Content-Type", "application/json")
    if loader_name(seconds) == "wrk":
        return _wrk(url, method, body, hdrs, connections, seconds, warmup_s, ok_status, ok_body)
    return _python(url, method, body, hdrs, connections, seconds, warmup_s, ok_status, ok_body)


def http_load_cpu(pids: Mapping[str, int], url: str, *, seconds: float, warmup_s: float,
                  metrics: Mapping[str, str] | None = None, **kw: Any) -> Measured:
    """`http_load`, also charging the CPU time of `pids` over the timed window to each
    successful request (`extra["cpu_ms_per_op"]`): a figure that, unlike rps, holds
    up on a box shared with other work. `metrics` (process -> its /metrics URL): the
    durable writes per request too (`extra["durable_per_op"]`, see bench.durable), read
    outside the CPU window so the scrapes are not charged to the requests."""
    if warmup_s > 0:
        http_load(url, seconds=warmup_s, warmup_s=0, **kw)
    counts_before = durable.scrape(metrics) if metrics else {}
    before = cpu_seconds(pids)
    result = http_load(url, seconds=seconds, warmup_s=0, **kw)
    after = cpu_seconds(pids)
    if metrics and result.ok:
        writes = durable.per_op(counts_before, durable.scrape(metrics), result.ok)
        if writes:
            result.extra["durable_per_op"] = writes
    spent = {n: after[n] - before[n] for n in after if n in before}
    if result.ok:
        per = {n: round(s * 1000 / result.ok, 3) for n, s in spent.items()}
        result.extra["cpu_ms_per_op"] = per
        result.extra["cpu_ms_per_op_total"] = round(sum(per.values()), 3)
    if result.seconds:
        result.extra["cpu_cores"] = {n: round(s / result.seconds, 2) for n, s in spent.items()}
    return result


def _python(url: str, method: str, body: str, headers: Mapping[str, str], connections: int,
            seconds: float, warmup_s: float, ok_status: int | None, ok_body: str) -> Measured:
    argv = [sys.executable, "-m", "bench.loadgen", "--url", url, "--method", method,
            "--body", body, "--connections", str(connections), "--warmup", str(warmup_s),
            "--seconds", str(seconds), "--ok-status", str(ok_status or 0),
            "--ok-body", ok_body]
    for key, value in headers.items():
        argv += ["--header", f"{key}: {value}"]
    out = subprocess.run(argv, capture_output=True, text=True, check=True,
                         timeout=warmup_s + seconds + 30, cwd=Path(__file__).parent.parent)
    return Measured.from_json(json.loads(out.stdout.strip().splitlines()[-1]))


def _wrk(url: str, method: str, body: str, headers: Mapping[str, str], connections: int,
         seconds: float, warmup_s: float, ok_status: int | None, ok_body: str) -> Measured:
    header_lines = "\n".join(
        f"wrk.headers[ [==[{k}]==] ] = [==[{v}]==]" for k, v in headers.items())
    checked = ok_status is not None or bool(ok_body)
    response = _RESPONSE_FN % {"ok_status": ok_status or 0, "ok_body": ok_body}
    script = _WRK_LUA % {"method": method, "body": body, "headers": header_lines,
                         "response": response if checked else ""}
    with tempfile.NamedTemporaryFile("w", suffix=".lua", prefix="shop-bench-",
                                     delete=False) as f:
        f.write(script)
        lua = f.name
    try:
        # One wrk thread: on a small box every core wrk takes is one the servers lose.
        base = ["wrk", "-t1", f"-c{connections}", "--timeout", "10s", "-s", lua]
        if warmup_s > 0:
            warm = max(1, round(warmup_s))
            subprocess.run([*base, f"-d{warm}s", url], capture_output=True, text=True,
                           check=True, timeout=warm + 30)
        secs = max(1, round(seconds))
        out = subprocess.run([*base, f"-d{secs}s", url], capture_output=True, text=True,
                             check=True, timeout=secs + 30)
    finally:
        os.unlink(lua)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result:\n{out.stdout}\n{out.stderr}")
    data = json.loads(line[len("WRKJSON "):])
    elapsed = data["duration_us"] / 1e6
    requests = int(data["requests"])
    statuses = {str(k): int(v) for k, v in data["statuses"].items()}
    ok = int(data["matched"]) if checked else requests - int(data["status"])
    sock_errors = sum(int(data[k]) for k in ("connect", "read", "write", "timeout"))
    extra: dict[str, object] = {"socket_errors": sock_errors}
    if statuses:
        extra["statuses"] = statuses
    return Measured(
        rps=ok / elapsed if elapsed else 0.0, p50_ms=data["p50_us"] / 1000.0,
        p99_ms=data["p99_us"] / 1000.0, ok=ok, errors=requests - ok + sock_errors,
        seconds=elapsed, tool="wrk", extra=extra)
