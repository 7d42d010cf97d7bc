"""The bench run: every scenario beside its raw baseline, then the report.

Order: cold start (nothing else running); shop started (or attached) with each HTTP
scenario right after its raw baseline, so both see the same box; shop stopped; an
empty and a grown shop side by side (bench.grown, kept fill under var/bench/filled/); then
the event path (raw JetStream, then shop's outbox relay and consumer) on fresh NATS
servers. Every process started here is stopped here, by PID.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from bench import shop as shop_mod
from bench.coldstart import cold_start
from bench.curve import curve_rows, one_connection_goal, plot_curve
from bench.fill_plan import FULL, SMOKE, FillSizes
from bench.grown import grown
from bench.load import http_load_cpu, loader_name
from bench.profile import profile_processes
from bench.raw.http import ORDER_BODY, RawSaga, raw_fanout, raw_hop, raw_saga
from bench.report import (
    IDLE_RSS_GOAL_MB,
    PG_SCENARIOS,
    SCENARIOS,
    append_history,
    build_doc,
    machine_info,
    previous_run,
    print_report,
)
from bench.stats import Measured, best_round
from bench.timeline import format_timeline, measure_timeline
from ops.natsd import NatsServer
from ops.pgserve import EmbeddedPostgres
from ops.process import REPO_ROOT
from services.common import envvars

__all__ = ["main"]

DEFAULT_OUT = REPO_ROOT / "var" / "bench" / "latest.json"


def _say(msg: str) -> None:
    print(f"  {time.strftime('%H:%M:%S')} {msg}", flush=True)


class BenchRun:
    def __init__(self, seconds: float, warmup_s: float, tmp: Path) -> None:
        self.seconds = seconds
        self.warmup_s = warmup_s
        self.tmp = tmp
        self.logs = tmp / "logs"
        self.failures: dict[str, str] = {}
        self.notes: list[str] = []
        self.tried: dict[str, list[Measured]] = {}  # every round of each name
        # Rounds of each scenario beside its raw baseline (`measure_pair`).
        self.rounds = 1
        self.curve = True  # the order saga at 1, 4, 16 and 64 connections
        self.profile_dir: Path | None = None  # py-spy flame graphs of the order scenario
        self.curve_rows: list[dict[str, Any]] = []
        self.grown = True  # the same figures on an empty and on a grown system
        self.grown_doc: dict[str, Any] | None = None
        self.profile: dict[str, Any] | None = None
        # DB=postgres: the order saga and the event path run on PostgreSQL too, beside
        # SQLite.
        self.postgres = envvars.DB.get().lower() == "postgres"

    def measure(self, name: str, fn: Callable[[], Measured]) -> Measured:
        t0 = time.perf_counter()
        try:
            result = fn()
        except Exception as e:  # a harness or system failure, reported, not raised
            self.failures[name] = f"{type(e).__name__}: {e}"[:2000]
            result = Measured.failed(self.failures[name])
            _say(f"{name:<14} FAILED after {time.perf_counter() - t0:.1f} s: "
                 f"{self.failures[name][:300]}")
        else:
            _say(f"{name:<14} {result.rps:>10,.1f}/s  p50 {result.p50_ms:8.2f} ms  "
                 f"p99 {result.p99_ms:8.2f} ms  ({result.tool}, {time.perf_counter() - t0:.1f} s)")
        self.tried.setdefault(name, []).append(result)
        return result

    @property
    def results(self) -> dict[str, Measured]:
        """Each name's best round."""
        return {name: best_round(rounds) for name, rounds in self.tried.items()}

    def fail(self, name: str, why: str) -> None:
        """`name` could not be measured at all (its system did not come up)."""
        self.failures[name] = why
        self.tried[name] = [Measured.failed(why)]

    def measure_pair(self, raw: str, raw_fn: Callable[[], Measured], name: str,
                     fn: Callable[[], Measured], before: Callable[[str], None]) -> None:
        """A scenario and its raw baseline in `rounds` alternating rounds (raw first,
        then the scenario first, ...); `before(name)` runs before each of the scenario's
        rounds. Each keeps its best round: others' work on a shared box slows a round
        down, never speeds it up, and the alternation puts a slow patch on both alike."""
        def scenario() -> Measured:
            before(name)
            return fn()

        steps = [(raw, raw_fn), (name, scenario)]
        for r in range(self.rounds):
            for n, f in steps if r % 2 == 0 else steps[::-1]:
                self.measure(n, f)

    def subprocess_json(self, argv: list[str], timeout_s: float,
                        env: dict[str, str] | None = None) -> dict[str, Any]:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s,
                             cwd=REPO_ROOT, env={**os.environ, **(env or {})})
        if out.returncode != 0:
            raise RuntimeError(f"{argv[2]} exited {out.returncode}: {out.stderr[-1500:]}")
        doc = json.loads(out.stdout.strip().splitlines()[-1])
        assert isinstance(doc, dict)
        return doc


def _shop_http(run: BenchRun, rss: dict[str, Any]) -> None:
    url = envvars.SHOP_BENCH_URL.get()
    target: shop_mod.ShopTarget | None = None
    try:
        try:
            if url:
                _say(f"attaching to the running system at {url}")
                target = shop_mod.attach_shop(url)
            else:
                t0 = time.perf_counter()
                target = shop_mod.start_shop(run.tmp / "shop")
                _say(f"shop started for the load scenarios in {time.perf_counter() - t0:.2f} s")
            shop_mod.prepare(target)
        except Exception as e:
            why = f"shop not usable: {type(e).__name__}: {e}"[:2000]
            _say(f"FAILED: {why}")
            for name in ("product_get", "dashboard", "order"):
                run.fail(name, why)
            run.measure("raw_hop", lambda: raw_hop(run.logs, seconds=run.seconds,
                                                   warmup_s=run.warmup_s))
            run.measure("raw_fanout", lambda: raw_fanout(run.logs, seconds=run.seconds,
                                                         warmup_s=run.warmup_s))
            run.measure("raw_saga", lambda: raw_saga(run.logs, run.tmp / "raw",
                                                     seconds=run.seconds, warmup_s=run.warmup_s))
            return
        time.sleep(min(1.0, 3 * run.seconds))  # let the set-up's events settle
        idle = shop_mod.rss_snapshot(target.pids)
        pss = [shop_mod.pss_kb(pid) for pid in target.pids.values()]
        rss.update(idle=idle, idle_total=round(sum(idle.values()), 1),
                   idle_pss_total=round(sum(p for p in pss if p) / 1024, 1),
                   goal_mb=IDLE_RSS_GOAL_MB,
                   met=bool(idle) and sum(idle.values()) < IDLE_RSS_GOAL_MB)
        secs, warm = run.seconds, run.warmup_s
        base = target.base_url
        auth = target.auth
        healthy_dashboard = target.dashboard_ok
        shop_target = target

        def shop_load(url: str, **kw: Any) -> Measured:
            return http_load_cpu(shop_target.pids, url, **kw)

        def settled(name: str) -> None:
            # A scenario that overloads one service can leave the gateway's breaker for
            # it open (30 s): the next scenario must not be measured against that.
            try:
                shop_mod.wait_ready(shop_target, before=name)
            except RuntimeError as e:
                shop_target.notes.append(f"before {name}: {e}")

        # The dashboard goes last: under overload its parts time out, which counts
        # against the breakers of the services it reads (order among them).
        with shop_mod.RssSampler(target.pids) as sampler:
            run.measure_pair(
                "raw_hop", lambda: raw_hop(run.logs, seconds=secs, warmup_s=warm),
                "product_get", lambda: shop_load(
                    f"{base}/api/products/{shop_mod.PRODUCT_ID}", headers=auth,
                    connections=64, seconds=secs, warmup_s=warm), settled)
            run.measure_pair(
                "raw_saga", lambda: raw_saga(run.logs, run.tmp / "raw", seconds=secs,
                                             warmup_s=warm),
                "order", lambda: _order_load(run, shop_target), settled)
            if run.profile_dir is not None:
                profile_dir = run.profile_dir
                settled("the profile")
                _say("profiling the order scenario (py-spy on every process)")
                run.profile = profile_processes(
                    shop_target.pids, profile_dir, secs,
                    lambda: shop_load(f"{base}/api/orders", method="POST", body=ORDER_BODY,
                                      headers=auth, connections=16, ok_status=201,
                                      seconds=secs, warmup_s=0))
            if run.curve:
                run.curve_rows = _curve(run, shop_load, settled, base, auth)
            run.measure_pair(
                "raw_fanout", lambda: raw_fanout(run.logs, seconds=secs, warmup_s=warm),
                "dashboard", lambda: shop_load(
                    f"{base}/api/dashboard", headers=auth, connections=64,
                    ok_body=healthy_dashboard, seconds=secs, warmup_s=warm), settled)
        rss.update(load=sampler.peak, load_total=round(sum(sampler.peak.values()), 1))
    finally:
        if target is not None:
            run.notes.extend(target.notes)
            target.stop()


def _curve(run: BenchRun, shop_load: Callable[..., Measured], settled: Callable[[str], None],
           base: str, auth: dict[str, str]) -> list[dict[str, Any]]:
    secs, warm = run.seconds, run.warmup_s
    try:
        with RawSaga(run.logs, run.tmp / "raw-curve") as raw:
            def shop_at(conns: int) -> Measured:
                settled(f"order at {conns} connections")
                return shop_load(f"{base}/api/orders", method="POST", body=ORDER_BODY,
                                 headers=auth, connections=conns, ok_status=201,
                                 seconds=secs, warmup_s=warm)

            def raw_at(conns: int) -> Measured:
                return raw.load(conns, seconds=secs, warmup_s=warm)

            rows = curve_rows(shop_at, raw_at)
    except Exception as e:  # reported, the rest of the run goes on
        run.failures["curve"] = f"{type(e).__name__}: {e}"[:2000]
        return []
    for r in rows:
        _say(f"curve {r['connections']:>3} conns: shop {r['shop']['rps']:,.1f}/s p99 "
             f"{r['shop']['p99_ms']:.1f} ms, raw {r['raw']['rps']:,.1f}/s p99 "
             f"{r['raw']['p99_ms']:.1f} ms")
    return rows


def _timeline(run: BenchRun, profile: dict[str, Any]) -> None:
    """With the profile: where one order's time goes, on a system of its own started
    after the HTTP scenarios' one has stopped (bench.timeline)."""
    _say("timing one order's steps at 1 connection (every trace sampled)")
    try:
        profile["timeline"] = measure_timeline(seconds=run.seconds)
    except Exception as e:  # reported, the rest of the run goes on
        run.failures["timeline"] = f"{type(e).__name__}: {e}"[:2000]
        return
    for line in format_timeline(profile["timeline"]):
        _say(line)


def _order_load(run: BenchRun, target: shop_mod.ShopTarget, *,
                count_writes: bool = True) -> Measured:
    """The order scenario's load (the same for both backends); `count_writes`: its durable
    writes per order too (SQLite only: the PostgreSQL backend counts no commits, and a 0
    there would be a wrong figure, not a small one)."""
    return http_load_cpu(target.pids, f"{target.base_url}/api/orders", method="POST",
                         body=ORDER_BODY, headers=target.auth, connections=16,
                         ok_status=201, seconds=run.seconds, warmup_s=run.warmup_s,
                         metrics=target.metrics if count_writes else None)


def _order_on_postgres(run: BenchRun) -> None:
    """The order scenario again, every service on an embedded PostgreSQL (a database
    each), with the SQLite shop stopped: the same box, the same load."""
    pg_dir = Path(tempfile.mkdtemp(prefix="shop-bench-pg-"))  # the server's user reaches it
    pg = EmbeddedPostgres(pg_dir)
    target: shop_mod.ShopTarget | None = None
    try:
        pg.start()
        target = shop_mod.start_shop(run.tmp / "shop-pg",
                                     env={"SHOP_DATABASE_URL": pg.server_url})
        shop_mod.prepare(target)
        time.sleep(min(1.0, 3 * run.seconds))  # let the set-up's events settle
        shop_mod.wait_ready(target, before="order_pg")
        pg_target = target
        run.measure("order_pg", lambda: _order_load(run, pg_target, count_writes=False))
    except Exception as e:
        why = f"{type(e).__name__}: {e}"[:2000]
        run.fail("order_pg", why)
        _say(f"order_pg       FAILED: {why[:300]}")
    finally:
        if target is not None:
            run.notes.extend(f"order_pg: {n}" for n in target.notes)
            target.stop()
        pg.stop()
        shutil.rmtree(pg_dir, ignore_errors=True)


def _grown(run: BenchRun, sizes: FillSizes, kept_root: Path, rounds: int, settle: bool) -> None:
    """The empty system beside the grown one (bench.grown); a failure is reported."""
    t0 = time.perf_counter()
    try:
        run.grown_doc = grown(run.tmp, sizes, seconds=run.seconds, warmup_s=run.warmup_s,
                              say=_say, kept_root=kept_root, rounds=rounds, settle=settle)
    except Exception as e:
        run.failures["grown"] = f"{type(e).__name__}: {e}"[:2000]
        _say(f"grown          FAILED after {time.perf_counter() - t0:.1f} s: "
             f"{run.failures['grown'][:300]}")
        return
    for r in run.grown_doc["rows"]:
        _say(f"grown {r['figure']:<17} empty {r['empty']:,.2f} filled {r['filled']:,.2f} "
             f"ratio {r['ratio']:.2f} ({r['goal']}) " + ("met" if r["met"] else "MISSED"))


def _events(run: BenchRun) -> None:
    secs, warm = str(run.seconds), str(run.warmup_s)
    raw: dict[str, Any] = {}
    try:
        with NatsServer(run.tmp / "nats-raw", secured=False) as nats:
            raw = run.subprocess_json([sys.executable, "-m", "bench.raw.jetstream",
                                       "--nats", nats.url, "--seconds", secs, "--warmup", warm],
                                      timeout_s=6 * run.seconds + 60)
    except Exception as e:
        why = f"{type(e).__name__}: {e}"[:2000]
        raw = {"publish": Measured.failed(why).to_json(),
               "pull_ack": Measured.failed(why).to_json()}
        run.failures["raw_jetstream"] = why
    run.measure("raw_publish", lambda: Measured.from_json(raw["publish"]))
    run.measure("raw_pull_ack", lambda: Measured.from_json(raw["pull_ack"]))
    shop: dict[str, Any] = {}
    try:
        # Plain NATS, as for the raw figures beside it: this measures shop's outbox and
        # consumers, not TLS.
        with NatsServer(run.tmp / "nats-events", secured=False) as nats:
            shop = run.subprocess_json([sys.executable, "-m", "bench.events", "--nats", nats.url,
                                        "--data", str(run.tmp / "events"), "--seconds", secs,
                                        "--warmup", warm], timeout_s=10 * run.seconds + 120,
                                       env={"SHOP_MTLS": "off"})
    except Exception as e:
        why = f"{type(e).__name__}: {e}"[:2000]
        shop = {"outbox": Measured.failed(why).to_json(),
                "consumer": Measured.failed(why).to_json()}
        run.failures["events"] = why
    run.measure("outbox", lambda: Measured.from_json(shop["outbox"]))
    run.measure("consumer", lambda: Measured.from_json(shop["consumer"]))
    if run.postgres:
        _events_on_postgres(run)


def _events_on_postgres(run: BenchRun) -> None:
    """The same relay and consumer on an embedded PostgreSQL (fresh NATS, same sizes)."""
    secs, warm = str(run.seconds), str(run.warmup_s)
    pg_dir = Path(tempfile.mkdtemp(prefix="shop-bench-pg-"))  # the server's user reaches it
    pg = EmbeddedPostgres(pg_dir)
    shop: dict[str, Any] = {}
    try:
        pg.start()
        # Plain NATS, as on SQLite: the two differ only in the database.
        with NatsServer(run.tmp / "nats-events-pg", secured=False) as nats:
            shop = run.subprocess_json([sys.executable, "-m", "bench.events", "--nats", nats.url,
                                        "--data", str(run.tmp / "events-pg"), "--seconds", secs,
                                        "--warmup", warm, "--database-url", pg.server_url],
                                       timeout_s=10 * run.seconds + 120,
                                       env={"SHOP_MTLS": "off"})
    except Exception as e:
        why = f"{type(e).__name__}: {e}"[:2000]
        shop = {"outbox": Measured.failed(why).to_json(),
                "consumer": Measured.failed(why).to_json()}
        run.failures["events_pg"] = why
    finally:
        pg.stop()
        shutil.rmtree(pg_dir, ignore_errors=True)
    run.measure("outbox_pg", lambda: Measured.from_json(shop["outbox"]))
    run.measure("consumer_pg", lambda: Measured.from_json(shop["consumer"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--smoke", action="store_true",
                        help="tiny durations: proves the harness works, figures mean little")
    parser.add_argument("--out", type=Path, default=None,
                        help="latest.json path (env SHOP_BENCH_OUT; default var/bench/latest.json);"
                             " history.jsonl goes beside it")
    parser.add_argument("--seconds", type=float, default=None,
                        help="measured window per scenario (env SHOP_BENCH_SECONDS, default 5)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, data)")
    parser.add_argument("--no-curve", action="store_true",
                        help="skip the order saga at 1, 4, 16 and 64 connections")
    parser.add_argument("--no-grown", action="store_true",
                        help="skip the empty-versus-grown scenario (1,000,000 orders filled "
                             "once into var/bench/filled/; --smoke: a small fill)")
    parser.add_argument("--profile", action="store_true",
                        help="py-spy flame graphs of the order scenario per process "
                             "(env SHOP_BENCH_PROFILE=1; make bench PROFILE=1)")
    args = parser.parse_args(argv)
    if args.smoke:
        # A second per window: 0.3 s at 64 connections could end, on a loaded box, before
        # one dashboard (raw or shop, empty or grown) was answered.
        seconds, warmup_s = args.seconds or 1.0, 0.2
    else:
        seconds = args.seconds or envvars.SHOP_BENCH_SECONDS.get()
        warmup_s = min(1.0, seconds)
    out = args.out or Path(envvars.SHOP_BENCH_OUT.get() or DEFAULT_OUT)
    history = out.parent / "history.jsonl"

    def on_term(signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt  # unwinds through every finally: all children stopped

    signal.signal(signal.SIGTERM, on_term)
    tmp = Path(tempfile.mkdtemp(prefix="shop-bench-"))
    loader = loader_name(seconds)
    machine = machine_info(loader)
    print(f"shop bench{' (smoke)' if args.smoke else ''}: {seconds:g} s per scenario after "
          f"{warmup_s:g} s warm-up; HTTP load by {loader}; work dir {tmp}", flush=True)
    t_wall = time.perf_counter()
    run = BenchRun(seconds, warmup_s, tmp)
    # Two rounds of each HTTP scenario and its baseline, as the grown part has; the smoke
    # proves the harness and takes one.
    run.rounds = 1 if args.smoke else 2
    if run.rounds > 1:
        run.notes.append(f"product_get, order and dashboard and their raw baselines: the "
                         f"best of {run.rounds} alternating rounds each")
    run.curve = not args.no_curve
    run.grown = not args.no_grown
    if args.profile or envvars.SHOP_BENCH_PROFILE.get():
        run.profile_dir = out.parent / "profile"
    cold: dict[str, float] = {}
    rss: dict[str, Any] = {"goal_mb": IDLE_RSS_GOAL_MB, "met": False}
    try:
        try:
            cold = cold_start(tmp / "coldstart")
            _say(f"{'cold_start':<14} {cold['seconds']:.2f} s to all healthy "
                 f"(supervisor says {cold['reported_s']:.2f} s)")
        except Exception as e:
            run.failures["cold_start"] = f"{type(e).__name__}: {e}"[:2000]
            _say(f"cold_start     FAILED: {run.failures['cold_start'][:300]}")
            cold = {"seconds": 0.0, "reported_s": 0.0}
        _shop_http(run, rss)
        if run.profile is not None:
            _timeline(run, run.profile)
        if run.postgres:
            _order_on_postgres(run)
        if run.grown:
            # The kept fill lives beside the figures (var/bench/filled/ by default).
            _grown(run, SMOKE if args.smoke else FULL, out.parent / "filled",
                   rounds=1 if args.smoke else 2, settle=not args.smoke)
        _events(run)
    except KeyboardInterrupt:
        print("interrupted; everything started was stopped", file=sys.stderr)
        return 130
    finally:
        if args.keep:
            print(f"  kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    raw_of = {"product_get": "raw_hop", "dashboard": "raw_fanout", "order": "raw_saga",
              "outbox": "raw_publish", "consumer": "raw_pull_ack",
              "order_pg": "order", "outbox_pg": "outbox", "consumer_pg": "consumer"}
    missing = Measured.failed("not run")
    names = (*SCENARIOS, *PG_SCENARIOS) if run.postgres else SCENARIOS
    results = run.results
    pairs = {name: (results.get(name, missing), results.get(raw_of[name], missing))
             for name in names}
    extra: dict[str, Any] = {}
    if run.curve_rows:
        png = out.parent / "curve.png"
        why = plot_curve(run.curve_rows, png)
        extra["curve"] = {"rows": run.curve_rows, "one_connection": one_connection_goal(
            run.curve_rows), "plot": "" if why else str(png), "plot_error": why}
    if run.profile is not None:
        extra["profile"] = run.profile
    if run.grown_doc is not None:
        extra["grown"] = run.grown_doc
    doc = build_doc(pairs, cold, rss, machine, smoke=args.smoke, seconds=seconds,
                    failures=run.failures, notes=run.notes,
                    wall_s=time.perf_counter() - t_wall, extra=extra)
    previous = previous_run(history, smoke=args.smoke)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    append_history(history, doc)
    print_report(doc, previous)
    print(f"  wrote {out} and appended to {history} ({doc['run']['wall_s']:.0f} s in all)")
    return 1 if run.failures else 0
