"""Log lines are JSON with service, instance, request id and extra fields."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from services.common import context
from services.common.logging import JsonFormatter


def test_json_line_has_context_and_extras(tmp_path: Path) -> None:
    fmt = JsonFormatter("order", "order-1")
    record = logging.LogRecord("shop.t", logging.INFO, __file__, 1, "hello %s", ("x",), None)
    record.order_id = "o1"
    with context.bind(request_id="rid-1"):
        line = fmt.format(record)
    entry = json.loads(line)
    assert entry["msg"] == "hello x"
    assert entry["level"] == "INFO"
    assert (entry["service"], entry["instance"]) == ("order", "order-1")
    assert entry["request_id"] == "rid-1"
    assert entry["order_id"] == "o1"
    assert isinstance(entry["ts"], float)
