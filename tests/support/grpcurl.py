"""grpcurl as a person runs it, on the mTLS mesh: certificate flags and protosets."""

from __future__ import annotations

import functools
import importlib
import sys
import tempfile
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2

from tests.support.mesh import mtls_enabled
from tests.support.mesh import pki as pki_dir

GRPCURL = Path(sys.executable).parent / "grpcurl"


def tls_flags(identity: str) -> list[str]:
    """grpcurl presenting `identity`'s certificate (plaintext with SHOP_MTLS=off)."""
    if not mtls_enabled():
        return ["-plaintext"]
    pki = pki_dir()
    return ["-cacert", str(pki / "ca.pem"), "-cert", str(pki / f"{identity}.pem"),
            "-key", str(pki / f"{identity}.key")]


@functools.cache
def _protoset(service: str) -> Path:
    """The service's descriptors, as reflection would send them, in a protoset file."""
    module = importlib.import_module(f"shop.{service}.v1.{service}_pb2")
    files: dict[str, descriptor_pb2.FileDescriptorProto] = {}

    def add(fd: Any) -> None:
        if fd.name in files:
            return
        for dep in fd.dependencies:
            add(dep)
        proto = descriptor_pb2.FileDescriptorProto()
        fd.CopyToProto(proto)
        files[fd.name] = proto

    add(module.DESCRIPTOR)
    # Beside the session's certificates, so it goes when they go.
    where = pki_dir() if pki_dir().is_dir() else Path(tempfile.gettempdir())
    out = where / f"{service}.protoset"
    out.write_bytes(descriptor_pb2.FileDescriptorSet(file=list(files.values()))
                    .SerializeToString())
    return out


def proto_source(service: str) -> tuple[str, ...]:
    """The contract without reflection (which is the operator's alone)."""
    return ("-protoset", str(_protoset(service)))
