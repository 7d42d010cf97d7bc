"""JSON log lines on stderr, one object per line, each tagged with service, instance and
the current request id. Extra fields passed with `extra={...}` are added as keys."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

from services.common import context
from services.common.settings import Settings
from services.common.tracing import current_trace_id

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD_ATTRS = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys() | {"message", "asctime"}
)

class JsonFormatter(logging.Formatter):
    def __init__(self, service: str, instance: str) -> None:
        super().__init__()
        self._service = service
        self._instance = instance

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname,
            "service": self._service,
            "instance": self._instance,
            "request_id": context.request_id(),
            "trace_id": current_trace_id(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, separators=(",", ":"))


def configure_logging(settings: Settings) -> None:
    """Route all logging to stderr as JSON (the entry point calls it once); a later call
    only changes the level: the root logger already has a JSON handler then."""
    root = logging.getLogger()
    root.setLevel(settings.log_level.upper())
    if any(isinstance(h.formatter, JsonFormatter) for h in root.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(settings.service, settings.instance_id))
    root.handlers[:] = [handler]
    # grpc and asyncio chatter is noise at INFO.
    logging.getLogger("asyncio").setLevel(logging.WARNING)
