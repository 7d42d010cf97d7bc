"""A local OTLP/HTTP trace receiver: real `ExportTraceServiceRequest` messages (decoded
with opentelemetry-proto), kept in memory (tests inspect them, the bench counts them).
Binds 127.0.0.1 on a free port; `endpoint` is what OTEL_EXPORTER_OTLP_ENDPOINT takes.
With `store`, every span is also appended to that file as one JSON line (`make run` keeps
them in var/traces/spans.jsonl, which `shopctl trace ORDER_ID` reads)."""

from __future__ import annotations

import gzip
import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

Span = trace_pb2.Span


@dataclass(frozen=True)
class Received:
    service: str  # the resource's service.name
    span: Any  # trace_pb2.Span


class OtlpReceiver:
    def __init__(self, store: Path | None = None, *, keep: bool = True) -> None:
        """`keep=False`: spans are only counted (`received`), for a long load run."""
        self.spans: list[Received] = []
        self.received = 0
        self.keep = keep
        self.store = store
        if store is not None:
            store.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path != "/v1/traces":
                    self.send_response(404)
                    self.end_headers()
                    return
                receiver._add(trace_service_pb2.ExportTraceServiceRequest.FromString(body))
                out = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def started(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> OtlpReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def _add(self, req: Any) -> None:
        got: list[Received] = []
        for rs in req.resource_spans:
            service = next((a.value.string_value for a in rs.resource.attributes
                            if a.key == "service.name"), "")
            for ss in rs.scope_spans:
                got.extend(Received(service, span) for span in ss.spans)
        with self._lock:
            self.received += len(got)
            if self.keep:
                self.spans.extend(got)
            if self.store is not None:
                with self.store.open("a") as f:
                    f.writelines(json.dumps(record(r)) + "\n" for r in got)

    def snapshot(self) -> list[Received]:
        with self._lock:
            return list(self.spans)


def record(r: Received) -> dict[str, Any]:
    """A span as the JSON line `store` keeps."""
    s = r.span
    return {"trace_id": s.trace_id.hex(), "span_id": s.span_id.hex(),
            "parent_id": s.parent_span_id.hex(), "name": s.name, "kind": int(s.kind),
            "service": r.service, "start_ns": int(s.start_time_unix_nano),
            "end_ns": int(s.end_time_unix_nano), "error": s.status.code == 2,
            "attributes": {a.key: attr(s, a.key) for a in s.attributes},
            "links": [link.span_id.hex() for link in s.links]}


def attr(span: Any, key: str) -> Any:
    """A span attribute's value (string, int, bool), None when absent."""
    for a in span.attributes:
        if a.key == key:
            kind = a.value.WhichOneof("value")
            return getattr(a.value, kind) if kind else None
    return None
