"""The ready file a process writes once it serves (SHOP_READY_FILE): how the supervisor
and the tests learn its address, even when it bound port 0. Stdlib only, so the gateway
can use it without importing the gRPC runtime."""

from __future__ import annotations

import json
import os
from pathlib import Path


def write_ready_file(path: Path, service: str, instance: str, addr: str,
                     metrics_port: int = 0) -> None:
    """Atomically write the ready file, so a reader never sees half of it. `metrics_port`:
    where /metrics is served (0: not served)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(
        json.dumps({"service": service, "instance": instance, "addr": addr, "pid": os.getpid(),
                    "metrics_port": metrics_port})
    )
    os.replace(tmp, path)
