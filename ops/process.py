"""Spawn, watch and stop shop processes (the eight services and the gateway).

Synchronous on purpose: the `make run` supervisor and the pytest fixtures (any
scope) use it without an event loop. Each process is a real `python -m ...`
child in its own session, so a Ctrl-C in the terminal reaches only the
supervisor, which then stops the children in order.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from services.common.settings import DEFAULT_PORTS, SERVICES, health_name

if TYPE_CHECKING:
    import urllib.request

    from ops.prefork import ForkedChild, Prefork
    from services.common.natsauth import NatsAuth
    from services.common.tls import Transport

# grpc and urllib are imported on first use, not here: `make run` spawns every child
# before it needs either, so their import (~0.1 s) is off the start-up path.

__all__ = [
    "GATEWAY",
    "REPO_ROOT",
    "ServiceProcess",
    "StartError",
    "System",
    "env_prefix",
    "free_port",
    "grpc_health",
    "http_ok",
    "operator_nats",
    "operator_transport",
    "port_in_use",
    "precompile",
    "start_system",
    "wait_all_ready",
]

GATEWAY = "gateway"
REPO_ROOT = Path(__file__).resolve().parent.parent


# Runs before the real command: PR_SET_PDEATHSIG makes the kernel send SIGTERM to the
# child when its parent dies, so a supervisor or pytest killed hard (SIGKILL, a CI
# timeout) leaves no orphaned services behind; exec keeps the same pid.
_LAUNCHER = (
    "import ctypes,os,signal,sys\n"
    "ctypes.CDLL(None).prctl(1,signal.SIGTERM)\n"
    "if os.getppid()!=int(sys.argv[1]):os._exit(1)\n"  # the parent died before prctl
    "os.execvp(sys.argv[2],sys.argv[2:])"
)


def _die_with_parent(argv: list[str]) -> tuple[list[str], Callable[[], None] | None]:
    """`argv` and a preexec_fn that make the child die with us. Linux only, and only
    from the main thread: the signal fires when the *thread* that spawned the child
    exits. A single-threaded parent (the `make run` supervisor) sets the signal in the
    forked child itself, saving each child a Python start (~20 ms of CPU); with other
    threads about, running Python between fork and exec is unsafe, so the launcher
    does it after the exec. grpc's core runs threads `threading` does not count: once
    grpc is loaded the parent counts as threaded (a child forked while one of them held
    the allocator's lock would hang before its exec, and the parent with it)."""
    if not sys.platform.startswith("linux") or threading.current_thread() \
            is not threading.main_thread():
        return argv, None
    if threading.active_count() == 1 and "grpc" not in sys.modules:
        return argv, _pdeathsig_preexec()
    return [sys.executable, "-S", "-c", _LAUNCHER, str(os.getpid()), *argv], None


_PRCTL: Any = None


def _pdeathsig_preexec() -> Callable[[], None]:
    global _PRCTL
    if _PRCTL is None:
        import ctypes

        _PRCTL = ctypes.CDLL(None).prctl  # looked up here, not in the child
    prctl, parent, sigterm = _PRCTL, os.getpid(), int(signal.SIGTERM)

    def preexec() -> None:
        prctl(1, sigterm)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before prctl
            os._exit(1)

    return preexec


class StartError(RuntimeError):
    """A process exited or did not become healthy in time; the message has its log tail."""


def env_prefix(name: str) -> str:
    return name.upper().replace("-", "_")


# Ports handed out for listeners come from below the kernel's ephemeral range
# (net.ipv4.ip_local_port_range, 32768-60999 by default): a port picked there can be taken
# by any outgoing connection before the listener binds it; below it, only by another pick.
_PICK_LOW, _PICK_HIGH = 20000, 32768
_PICK_TRIES = 64
# A pick is claimed for this long in a directory every process of this user shares, so a
# port handed out but not bound yet (a process still starting) is not handed out again,
# by this process or by another one picking at the same time (parallel test workers).
_CLAIM_S = 120.0
_CLAIMS = Path(tempfile.gettempdir()) / f"shop-ports-{os.getuid()}"


def _claim(port: int) -> bool:
    """Claim `port` for _CLAIM_S; False while another pick's claim on it is fresh."""
    path = _CLAIMS / str(port)
    try:
        _CLAIMS.mkdir(mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        try:
            if time.time() - path.stat().st_mtime < _CLAIM_S:
                return False
            os.utime(path)  # a stale claim: take it over
        except FileNotFoundError:
            return _claim(port)
        return True
    except OSError:
        return True  # no shared directory: the free check alone decides
    os.close(fd)
    return True


def free_port(host: str = "127.0.0.1", avoid: Collection[int] = ()) -> int:
    """A port free to listen on now, out of the way of outgoing connections' ports, and
    claimed for a while so no other pick hands it out before its listener binds.
    `avoid`: ports this caller already holds for its own listeners."""
    rng = random.SystemRandom()
    for _ in range(_PICK_TRIES):
        port = rng.randrange(_PICK_LOW, _PICK_HIGH)
        if port not in avoid and not port_in_use(port, host) and _claim(port):
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """True when a listener holds `port`. grpc binds with SO_REUSEPORT, so without
    this check a second `make run` would silently share ports with the first."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR: a socket in TIME_WAIT does not count as taken.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def precompile(root: Path = REPO_ROOT) -> None:
    """Write the .pyc files of the project's packages (only the stale ones), as pip did
    for site-packages. Each child would otherwise compile every project module it
    imports, on every start, when PYTHONDONTWRITEBYTECODE is set; up to date, this
    costs a few milliseconds of stat calls."""
    import compileall

    for pkg in ("services", "gateway", "gen", "ops"):
        if (root / pkg).is_dir():
            with contextlib.suppress(OSError):
                compileall.compile_dir(root / pkg, quiet=2, workers=1)


def operator_transport() -> Transport:
    """The tools' transport: mTLS as the operator (SHOP_IDENTITY wins) unless SHOP_MTLS=off,
    from the environment as it is now."""
    from services.common.settings import load_tls_config
    from services.common.spiffe import OPERATOR
    from services.common.tls import Transport

    return Transport.of(load_tls_config(), OPERATOR, warn=False)


def operator_nats() -> NatsAuth:
    """The tools' NATS identity: the operator (SHOP_NATS_IDENTITY, SHOP_IDENTITY win)."""
    from services.common.natsauth import NatsAuth
    from services.common.settings import load_nats_config, load_tls_config
    from services.common.spiffe import OPERATOR

    config = load_tls_config()
    return NatsAuth(load_nats_config().identity or config.identity_of(OPERATOR), config)


def grpc_health(addr: str, timeout: float = 1.0, service: str = "", *, server: str,
                transport: Transport | None = None) -> str:
    """The grpc.health.v1 status name at `addr` (the process of service `server`, whose
    identity mTLS checks), or UNREACHABLE / an error code name. `transport`: whose
    certificate calls (default: the operator's, `operator_transport`)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    via = transport or operator_transport()
    with via.open_sync_channel(addr, server, [("grpc.enable_http_proxy", 0)]) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            resp = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as exc:
            code = exc.code()
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                return "UNREACHABLE"
            return str(code.name)
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status))


_OPENER: urllib.request.OpenerDirector | None = None


def http_ok(url: str, timeout: float = 1.0) -> bool:
    global _OPENER
    import urllib.error
    import urllib.request

    if _OPENER is None:
        # No proxies: a developer's http_proxy must not swallow calls to localhost.
        _OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with _OPENER.open(url, timeout=timeout) as resp:
            return int(resp.status) == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _connect_addr(addr: str) -> str:
    """A wildcard bind address turned into one a client can dial."""
    host, _, port = addr.rpartition(":")
    if host in ("", "0.0.0.0", "[::]", "::"):
        host = "127.0.0.1"
    return f"{host}:{port}"


class ServiceProcess:
    """One instance of a service (or the gateway) as a child process.

    The port is fixed at construction (pass 0 to pick a free one now), so the
    address is known before the process even starts and `restart()` comes back
    on the same port.
    """

    def __init__(
        self,
        name: str,
        *,
        data_dir: str | os.PathLike[str],
        nats_url: str,
        port: int = 0,
        instance: str | None = None,
        env: Mapping[str, str] | None = None,
        argv: Sequence[str] | None = None,
        host: str = "127.0.0.1",
        picked_port: bool = False,
    ) -> None:
        self.name = name
        self.instance = instance or f"{name}-1"
        self.host = host
        # A free gRPC port (picked here, or by the caller: `picked_port`): its + 1000 may
        # be taken, so /metrics gets a free port too.
        self._any_metrics_port = picked_port or not port
        self.port = port or free_port(host)
        self.data_dir = Path(data_dir)
        self.nats_url = nats_url
        self.extra_env = dict(env or {})
        self.argv = list(argv) if argv else [sys.executable, "-m", self._module()]
        self.log_path = self.data_dir / "logs" / f"{self.instance}.log"
        self.ready_file = self.data_dir / "run" / f"{self.instance}.ready.json"
        self.restarts = 0
        # The last graceful stop ran out of time and ended in SIGKILL.
        self.killed_after_stop = False
        self._proc: subprocess.Popen[bytes] | ForkedChild | None = None
        self._log: IO[bytes] | None = None
        # Set by start_system: a pre-imported parent to fork this process from.
        self.forker: Prefork | None = None
        self._ready = False
        self.status = "STARTING"  # the health seen by the last readiness probe

    def _module(self) -> str:
        return GATEWAY if self.name == GATEWAY else f"services.{self.name}"

    @property
    def is_gateway(self) -> bool:
        return self.name == GATEWAY

    @property
    def addr(self) -> str:
        """host:port to dial; the ready file's address wins once it exists."""
        info = self.ready_info()
        if info and isinstance(info.get("addr"), str):
            return _connect_addr(info["addr"])
        return f"{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def metrics_url(self) -> str:
        """Where a service serves /metrics (from its ready file; the gateway's is its own
        HTTP port); "" before it is ready or when it serves none."""
        if self.is_gateway:
            return f"{self.base_url}/metrics"
        info = self.ready_info() or {}
        port = info.get("metrics_port")
        return f"http://{self.host}:{port}/metrics" if isinstance(port, int) and port else ""

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def returncode(self) -> int | None:
        """None while running (or never started), else the exit status (-N = signal N)."""
        return self._proc.poll() if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            SHOP_DATA_DIR=str(self.data_dir),
            NATS_URL=self.nats_url,
            SHOP_READY_FILE=str(self.ready_file),
            SHOP_INSTANCE_ID=self.instance,
            SHOP_HOST=self.host,
            PYTHONUNBUFFERED="1",
        )
        env[f"{env_prefix(self.name)}_PORT"] = str(self.port)
        if self._any_metrics_port and not self.is_gateway:
            env[f"{env_prefix(self.name)}_METRICS_PORT"] = "0"
        env.update(self.extra_env)
        return env

    def start(self) -> ServiceProcess:
        """Spawn without waiting; a no-op while running."""
        if self.running:
            return self
        self.killed_after_stop = False
        self._close_log()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.ready_file.parent.mkdir(parents=True, exist_ok=True)
        self.ready_file.unlink(missing_ok=True)  # a stale file must not count as ready
        self._ready = False
        self.status = "STARTING"
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - kept open while running
        env = self.env()
        if self.forker is not None:
            self._proc = self.forker.spawn(self.argv, env, REPO_ROOT, self._log)
            if self._proc is not None:
                return self
        argv, preexec = _die_with_parent(self.argv)
        self._proc = subprocess.Popen(
            argv,
            preexec_fn=preexec,
            env=env,
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    def ready_info(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.ready_file.read_text())
        except (OSError, ValueError):
            return None  # absent, or written but not complete yet
        return data if isinstance(data, dict) else None

    def poll_ready(self, check_timeout: float = 0.5) -> bool:
        """One non-blocking-ish readiness probe; raises StartError if the process died.

        Cheap until the process writes its ready file (it does so once serving, after
        its health went SERVING); then one health check confirms it, and its result
        is kept in `status`."""
        if self._proc is None:
            raise StartError(f"{self.instance} was never started")
        if self._ready and self.running:
            return True
        code = self._proc.poll()
        if code is not None:
            raise StartError(f"{self.instance} exited with code {code}\n{self.log_tail()}")
        info = self.ready_info()
        if info is None:
            return False
        self.status = self.health(check_timeout)
        self._ready = self.status == "SERVING"
        return self._ready

    def wait_ready(self, timeout: float = 30.0) -> ServiceProcess:
        wait_all_ready([self], timeout)
        return self

    def health(self, timeout: float = 1.0) -> str:
        if not self.running:
            return "STOPPED"
        if self.is_gateway:
            return "SERVING" if http_ok(f"{self.base_url}/healthz", timeout) else "UNREACHABLE"
        # Its own service's name: another server that took the port is not this one.
        return grpc_health(self.addr, timeout, service=health_name(self.name), server=self.name)

    def send_term(self) -> None:
        """SIGTERM without waiting (plus SIGCONT, in case it was frozen)."""
        if self._proc is not None and self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.send_signal(signal.SIGTERM)
                self._proc.send_signal(signal.SIGCONT)

    def terminate(self, timeout: float = 10.0) -> int | None:
        """Graceful stop: SIGTERM, wait, then SIGKILL after `timeout`."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            self.send_term()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                self.killed_after_stop = True
        self._after_exit()
        return proc.returncode

    def kill(self) -> int | None:
        """SIGKILL: a crash, for fault tests."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()
        self._after_exit()
        return proc.returncode

    def sigstop(self) -> None:
        """Freeze the process (a hung service: connections accepted, no answers)."""
        if self.running and self._proc is not None:
            self._proc.send_signal(signal.SIGSTOP)

    def sigcont(self) -> None:
        if self.running and self._proc is not None:
            self._proc.send_signal(signal.SIGCONT)

    def restart(self, timeout: float = 30.0, *, graceful: bool = True,
                wait: bool = True) -> ServiceProcess:
        """Stop and start again on the same port and data dir."""
        if graceful:
            self.terminate()
        else:
            self.kill()
        self.restarts += 1
        self.start()
        if wait:
            self.wait_ready(timeout)
        return self

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return f"(no log at {self.log_path})"
        tail = "\n".join(text.splitlines()[-lines:])
        return f"--- last lines of {self.log_path} ---\n{tail}"

    def _after_exit(self) -> None:
        self._ready = False
        self.ready_file.unlink(missing_ok=True)
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def __repr__(self) -> str:
        return f"<ServiceProcess {self.instance} {self.host}:{self.port} pid={self.pid}>"


def wait_all_ready(procs: Iterable[ServiceProcess], timeout: float = 30.0) -> None:
    """Poll every process until all are healthy; they start in parallel, so the
    total wait is the slowest one, not the sum."""
    pending = list(procs)
    deadline = time.monotonic() + timeout
    while pending:
        pending = [p for p in pending if not p.poll_ready()]
        if not pending:
            return
        if time.monotonic() >= deadline:
            names = ", ".join(p.instance for p in pending)
            tails = "\n".join(p.log_tail(10) for p in pending)
            raise StartError(f"not healthy within {timeout:.0f}s: {names}\n{tails}")
        time.sleep(0.01)  # until a ready file appears, a probe is one failed open()


class System(Mapping[str, ServiceProcess]):
    """The running services: `system["order"]` is the first order instance."""

    def __init__(self, data_dir: Path, nats_url: str, processes: Sequence[ServiceProcess],
                 gateway: ServiceProcess | None = None) -> None:
        self.data_dir = data_dir
        self.nats_url = nats_url
        self.processes = list(processes)
        self.gateway = gateway

    def __getitem__(self, name: str) -> ServiceProcess:
        for proc in self.processes:
            if proc.name == name:
                return proc
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys(p.name for p in self.processes))

    def __len__(self) -> int:
        return len(set(p.name for p in self.processes))

    def instances(self, name: str) -> list[ServiceProcess]:
        return [p for p in self.processes if p.name == name]

    def all(self) -> list[ServiceProcess]:
        """Every process, gateway last."""
        return self.processes + ([self.gateway] if self.gateway else [])

    def addr(self, name: str) -> str:
        return self[name].addr

    def addr_env(self) -> dict[str, str]:
        """`<SERVICE>_ADDR` for every service (its first instance)."""
        return {f"{env_prefix(n)}_ADDR": self[n].addr for n in self}

    @property
    def base_url(self) -> str:
        if self.gateway is None:
            raise RuntimeError("this system has no gateway")
        return self.gateway.base_url

    def stop(self, timeout: float = 10.0) -> list[str]:
        """Gateway first (no new requests), then the services, all gracefully; returns
        the instances that had to be killed, still running `timeout` after their SIGTERM.

        SIGTERM goes to every service at once so their grace periods overlap.
        """
        if self.gateway is not None:
            self.gateway.terminate(timeout)
        for proc in self.processes:
            proc.send_term()
        for proc in self.processes:
            proc.terminate(timeout)
        return [p.instance for p in self.all() if p.killed_after_stop]


def start_system(
    data_dir: str | os.PathLike[str],
    nats_url: str,
    *,
    ports: Mapping[str, int] | None = None,
    scale: Mapping[str, int] | None = None,
    with_gateway: bool = False,
    services: Sequence[str] = SERVICES,
    env: Mapping[str, str] | None = None,
    ready_timeout: float = 30.0,
    host: str = "127.0.0.1",
    argv_for: Callable[[str], Sequence[str]] | None = None,
    wait: bool = True,
    discovery: bool = False,
    forker: Prefork | None = None,
) -> System:
    """Start `services` (and the gateway) in parallel and wait until all are healthy.

    `ports`: name -> port for the first instance (missing or 0: a free port picked
    now, so every `<SERVICE>_ADDR` is known before anything starts). Extra
    instances from `scale` always take free ports. On failure everything started
    is stopped again and StartError is raised.
    `argv_for(name) -> argv` replaces the command (tests use a stand-in service).
    `wait=False` returns right after spawning: the caller then waits with
    `wait_all_ready(system.all())` and stops the system itself on failure.
    `discovery=True` (NATS is there and the processes register): a scaled service
    (scale > 1) gets no `<SERVICE>_ADDR`, so callers spread over its instances.
    `forker`: the processes are forked from this pre-imported parent where it can.
    """
    root = Path(data_dir)
    ports = dict(ports or {})
    scale = dict(scale or {})
    procs: list[ServiceProcess] = []
    # Every port is picked before anything binds: each pick avoids the ones before it.
    taken = {p for p in ports.values() if p}
    for name in services:
        for i in range(1, max(1, scale.get(name, 1)) + 1):
            given = ports.get(name, 0) if i == 1 else 0
            port = given or free_port(host, taken)
            taken.add(port)
            procs.append(ServiceProcess(
                name, data_dir=root, nats_url=nats_url, port=port, instance=f"{name}-{i}",
                host=host, argv=argv_for(name) if argv_for else None, picked_port=not given))
    gateway = None
    if with_gateway:
        gateway = ServiceProcess(
            GATEWAY, data_dir=root, nats_url=nats_url,
            port=ports.get(GATEWAY, 0) or free_port(host, taken),
            instance=f"{GATEWAY}-1", host=host,
            argv=argv_for(GATEWAY) if argv_for else None)
    system = System(root, nats_url, procs, gateway)
    shared = _addr_env(procs, scale, discovery=discovery)
    shared.update(env or {})
    for proc in system.all():
        proc.extra_env = {**shared, **proc.extra_env}
        proc.forker = forker
    try:
        for proc in system.all():
            proc.start()
        if wait:
            wait_all_ready(system.all(), ready_timeout)
    except BaseException:
        system.stop(timeout=5.0)
        raise
    return system


def _addr_env(procs: Sequence[ServiceProcess], scale: Mapping[str, int], *,
              discovery: bool = False) -> dict[str, str]:
    """`<SERVICE>_ADDR` pins a service to its first instance. A scaled service is
    left to discovery when there is one (else only on its default port, where the
    default-port fallback finds it), so calls can spread over its instances."""
    env: dict[str, str] = {}
    for proc in procs:
        if proc.instance != f"{proc.name}-1":
            continue
        scaled = scale.get(proc.name, 1) > 1
        if scaled and (discovery or proc.port == DEFAULT_PORTS.get(proc.name)):
            continue
        env[f"{env_prefix(proc.name)}_ADDR"] = f"{proc.host}:{proc.port}"
    return env
