"""A pre-imported parent for `make run`'s children.

Every service imports the same heavy stack (grpc, protobuf and the generated contracts,
nats, OpenTelemetry, the common layer): about 0.3 s of CPU each, ten times over on a
small box. `make run` instead starts one parent that imports all of it once, then forks
each service from it; the fork runs the service's module as `python -m` would, so a
service started this way is the same program with its imports already done.

Only a parent with a single thread forks (grpc's core threads start on first use, never
at import; the parent checks its thread count before each fork). A fork is asked for
over a socket pair: the request carries the module, the environment and the log file's
descriptor; the answer is the pid. The parent forks twice and the middle process exits,
so the service is adopted by the supervisor (a child subreaper), which then waits for
it, signals it and reads its exit status as for any child. Anything the parent cannot
serve (another command, other interpreter settings, a parent that died) is spawned the
usual way by the caller.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import runpy
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from services.common.settings import SERVICES

__all__ = ["ForkedChild", "Prefork"]

_PR_SET_PDEATHSIG = 1
_PR_SET_NAME = 15
_PR_SET_CHILD_SUBREAPER = 36
_MAX_MESSAGE = 1 << 20
_ADOPTION_S = 5.0
# What `make run`'s parent imports: each service's and the gateway's composition root,
# and so everything they import at start.
SHOP_MODULES = (*(f"services.{name}" for name in SERVICES), "gateway")


def _prctl(option: int, value: int) -> None:
    if ctypes.CDLL(None).prctl(option, value) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({option}) failed")


def _interpreter_env(env: Mapping[str, str]) -> dict[str, str]:
    """The variables the interpreter itself reads at start (PYTHONPATH, PYTHONHASHSEED,
    ...): a fork has them from the parent, so a child that asks for others is spawned."""
    return {k: v for k, v in env.items() if k.startswith("PYTHON")}


class ForkedChild:
    """A service forked by the parent and adopted by this process: the part of
    `subprocess.Popen` that `ops.process` uses."""

    def __init__(self, pid: int, args: Sequence[str]) -> None:
        self.pid = pid
        self.args = list(args)
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped elsewhere: gone, status unknown
                self.returncode = 255
            else:
                if pid == self.pid:
                    self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
            time.sleep(0.005)
        return code

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class Prefork:
    """The supervisor's side: start the parent, ask it for forks, stop it."""

    def __init__(self, log_path: Path, cwd: Path,
                 modules: Sequence[str] = SHOP_MODULES) -> None:
        self.log_path = log_path
        self.cwd = cwd
        self.modules = tuple(modules)
        self._sock: socket.socket | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._ready = False
        self._env: dict[str, str] = {}

    def start(self) -> Prefork:
        """Spawn the parent; its imports run while the caller goes on."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log, theirs:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "ops.prefork", str(theirs.fileno()), str(os.getpid()),
                 *self.modules],
                pass_fds=(theirs.fileno(),), env=self._env, cwd=self.cwd,
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        self._sock = ours
        return self

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def spawn(self, argv: Sequence[str], env: Mapping[str, str], cwd: Path,
              log: IO[bytes], timeout_s: float = 30.0) -> ForkedChild | None:
        """The service `argv` (`python -m <module>`) forked from the parent, or None when
        the parent cannot start it (the caller then spawns it itself)."""
        if (self._sock is None or len(argv) != 3 or argv[0] != sys.executable
                or argv[1] != "-m" or argv[2] not in self.modules
                or _interpreter_env(env) != _interpreter_env(self._env)):
            return None
        try:
            self._sock.settimeout(timeout_s)
            if not self._ready:
                if not json.loads(self._receive()).get("ready"):
                    raise OSError("the pre-imported parent did not say it was ready")
                # Forked services are adopted here when the middle process exits.
                _prctl(_PR_SET_CHILD_SUBREAPER, 1)
                self._ready = True
            request = {"module": argv[2], "env": dict(env), "cwd": str(cwd)}
            socket.send_fds(self._sock, [json.dumps(request).encode()], [log.fileno()])
            answer = json.loads(self._receive())
        except (OSError, ValueError) as exc:
            print(f"prefork: spawning {argv[2]} the usual way: {exc}", file=sys.stderr)
            self.close()
            return None
        pid = answer.get("pid")
        if not isinstance(pid, int):
            print(f"prefork: spawning {argv[2]} the usual way: {answer.get('error')}",
                  file=sys.stderr)
            return None
        return ForkedChild(pid, argv)

    def _receive(self) -> bytes:
        assert self._sock is not None
        data = self._sock.recv(_MAX_MESSAGE)
        if not data:
            raise OSError(f"the pre-imported parent exited (see {self.log_path})")
        return data

    def close(self) -> None:
        """Stop the parent (the services forked from it go on, adopted here)."""
        if self._sock is not None:
            self._sock.close()  # the parent reads an end of file and exits
            self._sock = None
        if self._ready:
            # Orphans from here on are init's again (forked ones stay our children).
            _prctl(_PR_SET_CHILD_SUBREAPER, 0)
            self._ready = False
        if self._proc is not None:
            try:
                self._proc.wait(2.0)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None


# --- the parent ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Job:
    """What a fork runs: set up by `_become`, then the module as `__main__`."""

    module: str
    env: dict[str, str]
    cwd: str
    log_fd: int
    supervisor: int


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


def _serve(sock: socket.socket, supervisor: int, modules: Sequence[str]) -> _Job:
    """Import `modules`, then answer fork requests until the supervisor closes its end
    (then exit); returns only in a forked service, with its job."""
    for module in modules:
        __import__(f"{module}.__main__")
    sock.send(json.dumps({"ready": True}).encode())
    while True:
        msg, fds, _, _ = socket.recv_fds(sock, _MAX_MESSAGE, 1)
        if not msg:
            sys.exit(0)
        answer: dict[str, Any]
        try:
            request = json.loads(msg)
            if len(fds) != 1:
                raise ValueError("a fork request carries one log file")
            if (threads := _threads()) != 1:
                raise RuntimeError(f"{threads} threads here: forking is not safe")
            job = _Job(str(request["module"]), dict(request["env"]), str(request["cwd"]),
                       fds[0], supervisor)
            pid = _fork_twice(sock)
            if pid == 0:
                return job  # in the service
            answer = {"pid": pid}
        except Exception as exc:
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        sock.send(json.dumps(answer).encode())


def _fork_twice(sock: socket.socket) -> int:
    """The service's pid here; 0 in the service. The middle process starts a session,
    forks the service, sends its pid and exits, so the service is adopted by the
    supervisor before the supervisor learns the pid."""
    read_end, write_end = os.pipe()
    middle = os.fork()
    if middle == 0:
        try:
            os.close(read_end)
            os.setsid()
            service = os.fork()
        except BaseException:
            os._exit(1)  # the middle process never returns into the parent's loop
        if service == 0:
            os.close(write_end)
            sock.close()
            return 0
        try:
            os.write(write_end, str(service).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with open(read_end, "rb") as pipe:
        text = pipe.read()
    os.waitpid(middle, 0)
    if not text:
        raise RuntimeError("the middle process died before forking the service")
    return int(text)


def _become(job: _Job) -> None:
    """In the forked service: the descriptors, directory and environment a spawned
    process would have, death with the supervisor, then the module as `__main__`."""
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(job.log_fd, 1)
    os.dup2(job.log_fd, 2)
    os.close(devnull)
    os.close(job.log_fd)
    os.chdir(job.cwd)
    os.environ.clear()
    os.environ.update(job.env)
    # Adopted by the supervisor once the middle process has exited (within a moment);
    # from then on its death is ours, as for a spawned child.
    deadline = time.monotonic() + _ADOPTION_S
    while os.getppid() != job.supervisor:
        if time.monotonic() >= deadline:
            os._exit(1)  # the supervisor died first: nobody to serve
        time.sleep(0.0005)
    _prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM))
    if os.getppid() != job.supervisor:
        os._exit(1)  # the supervisor died before the signal was set
    # `ps` shows the parent's command line for every fork; `top` and `ps -o comm` show
    # the instance.
    name = (job.env.get("SHOP_INSTANCE_ID") or job.module).encode()[:15]
    ctypes.CDLL(None).prctl(_PR_SET_NAME, ctypes.c_char_p(name), 0, 0, 0)
    # The service's module ran once in the parent, as an import: `python -m` runs it
    # afresh as __main__.
    sys.modules.pop(f"{job.module}.__main__", None)
    sys.argv = sys.argv[:1]  # run_module sets [0] to the module's file
    runpy.run_module(job.module, run_name="__main__", alter_sys=True)


def main(argv: Sequence[str]) -> None:
    sock = socket.socket(fileno=int(argv[0]))
    supervisor = int(argv[1])
    _prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM))  # no parent outlives its supervisor
    if os.getppid() != supervisor:
        sys.exit(1)
    job = _serve(sock, supervisor, argv[2:])
    _become(job)


if __name__ == "__main__":
    main(sys.argv[1:])
