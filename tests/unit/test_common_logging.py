"""Log lines are JSON with service, instance, request id and extra fields."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from services.common import context
from services.common.logging import JsonFormatter, configure_logging
from services.common.settings import Settings


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


def test_configuring_twice_keeps_one_handler_and_changes_the_level() -> None:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        root.handlers[:] = []
        configure_logging(Settings(service="order", instance_id="order-1"))
        first = root.handlers[:]
        assert len(first) == 1 and isinstance(first[0].formatter, JsonFormatter)
        configure_logging(Settings(service="order", instance_id="order-1", log_level="DEBUG"))
        assert root.handlers == first  # no second handler: the JSON one is found
        assert root.level == logging.DEBUG
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
