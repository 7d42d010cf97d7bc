"""Log calls in services/, gateway/ and ops/: a constant message, data in `extra=` (so the
JSON lines can be filtered by field), and loggers named `shop.<area>`."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_LEVELS = {"debug", "info", "warning", "error", "exception", "critical"}
# Loggers of third-party libraries, only ever quietened.
_FOREIGN = {"aiosqlite", "asyncio"}


def _sources() -> Iterator[tuple[Path, ast.Module]]:
    for top in ("services", "gateway", "ops"):
        for path in sorted((ROOT / top).rglob("*.py")):
            yield path, ast.parse(path.read_text(), str(path))


def _is_logger(node: ast.expr) -> bool:
    return isinstance(node, ast.Name) and node.id in {"log", "logger"}


def test_log_messages_are_constant_and_data_goes_in_extra() -> None:
    bad = []
    for path, tree in _sources():
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in _LEVELS and _is_logger(node.func.value)):
                msg = node.args[0] if node.args else None
                constant = isinstance(msg, ast.Constant) and isinstance(msg.value, str)
                if len(node.args) != 1 or not constant:
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not bad, f"format arguments or a built message instead of extra=: {bad}"


def test_loggers_are_named_shop_area() -> None:
    bad = []
    for path, tree in _sources():
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "getLogger" and node.args):
                name = node.args[0]
                ok = isinstance(name, ast.Constant) and isinstance(name.value, str) and (
                    name.value.startswith("shop.") or name.value in _FOREIGN)
                if not ok:
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not bad, f"loggers not named shop.<area>: {bad}"
