"""The image's entry point: the first argument chooses the process.

    docker run IMAGE order            # python -m services.order
    docker run IMAGE gateway          # python -m gateway
    docker run IMAGE shopctl status   # the operator command
    docker run IMAGE health ADDR      # exit 0 when the gRPC server at ADDR is SERVING

A service replaces this process (exec), so it is PID 1 and gets the container's SIGTERM.
"""

from __future__ import annotations

import os
import sys

from services.common.settings import SERVICES

__all__ = ["PROCESSES", "main", "module_of"]

GATEWAY = "gateway"
PROCESSES = (*SERVICES, GATEWAY)


def module_of(name: str) -> str:
    if name == GATEWAY:
        return GATEWAY
    if name in SERVICES:
        return f"services.{name}"
    raise ValueError(name)


def health(addr: str, timeout_s: float = 2.0) -> int:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(addr) as channel:
        try:
            resp = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=timeout_s)
        except grpc.RpcError as err:
            print(f"{addr}: {err.code().name}", file=sys.stderr)
            return 1
    serving = resp.status == health_pb2.HealthCheckResponse.SERVING
    return 0 if serving else 1


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(f"usage: IMAGE {{{'|'.join(PROCESSES)}|shopctl ...|health ADDR}}")
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name == "health" and len(rest) == 1:
        return health(rest[0])
    if name == "shopctl":
        from ops.shopctl import main as shopctl

        return shopctl(rest)
    try:
        module = module_of(name)
    except ValueError:
        print(f"unknown process {name!r}; one of {', '.join(PROCESSES)}, shopctl, health",
              file=sys.stderr)
        return 2
    os.execv(sys.executable, [sys.executable, "-m", module, *rest])


if __name__ == "__main__":
    sys.exit(main())
