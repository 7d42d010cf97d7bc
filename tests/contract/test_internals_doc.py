"""docs/internals.md names only what exists: every file path and every function, class or
attribute it writes as code (`name(...)`, `Class.attr`, `module.attr`, `CamelCase`)."""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "internals.md"
CODE_DIRS = ("services", "gateway", "ops", "tests", "bench")

_TICKED = re.compile(r"`([^`\n]+)`")
_PATH = re.compile(r"^[\w./<>|-]+\.(?:py|md|toml|proto|binpb|json|yaml)$")
_IDENT = r"[A-Za-z_]\w*"
_CALL = re.compile(rf"^(?:await\s+)?((?:{_IDENT}\.)*{_IDENT})\(")
_DOTTED = re.compile(rf"^((?:{_IDENT}\.)+{_IDENT})$")
_CLASS = re.compile(r"^[A-Z][a-z]+(?:[A-Z][a-z0-9]*)+$")  # SagaRunner, not SHOP_X or OK
# Files `make run` writes under the data dir, not part of the tree.
_WRITTEN_AT_RUN = ("run/", "var/")
# Names outside the code: libraries, protobuf packages, logger names (`shop.outbox`).
_FOREIGN = {"grpc", "asyncio", "aio", "pytest", "google", "shop", "gc"}


@cache
def _index() -> tuple[dict[str, set[str]], set[str], set[str]]:
    """Module basename -> names defined in it (top level and in its classes); every name
    defined anywhere; every module path (dotted and by basename)."""
    by_module: dict[str, set[str]] = defaultdict(set)
    everywhere: set[str] = set()
    modules: set[str] = set()
    files = [p for d in CODE_DIRS for p in (ROOT / d).rglob("*.py")]
    files += list((ROOT / "gen").rglob("*.pyi"))
    for path in files:
        rel = path.relative_to(ROOT / "gen" if path.suffix == ".pyi" else ROOT)
        stem = rel.with_suffix("").as_posix().replace("/", ".")
        modules.update({stem, path.stem, path.parent.name})
        names = by_module[path.stem]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names.add(node.name)
            elif isinstance(node, ast.arg):  # a function handed in (`wake_sender(...)`)
                names.add(node.arg)
            elif isinstance(node, ast.Assign):
                names.update(t.id for t in node.targets if isinstance(t, ast.Name))
                names.update(t.attr for t in node.targets if isinstance(t, ast.Attribute))
            elif isinstance(node, ast.AnnAssign):
                target = node.target
                if isinstance(target, ast.Name):
                    names.add(target.id)
                elif isinstance(target, ast.Attribute):
                    names.add(target.attr)
        everywhere |= names
    return by_module, everywhere, modules


def _ticked() -> list[str]:
    return [m.group(1).strip() for m in _TICKED.finditer(DOC.read_text())]


def _path_exists(text: str) -> bool:
    if "<" in text or "|" in text:  # a pattern (`services/<svc>/store.py`), not a file
        return True
    if text.startswith(_WRITTEN_AT_RUN):
        return True
    rel = text.lstrip("./")
    if (ROOT / rel).exists() or any((ROOT / d / rel).exists() for d in ("services", "docs")):
        return True
    # A bare module name inside its section (`clients.py` under services/common).
    return "/" not in rel and any(
        any((ROOT / d).rglob(rel)) for d in (*CODE_DIRS, "proto", "docs"))


def test_every_file_the_guide_names_exists() -> None:
    missing = [t for t in _ticked() if _PATH.match(t) and not _path_exists(t)]
    assert not missing, f"docs/internals.md names files that do not exist: {missing}"


def _name_exists(dotted: str) -> bool:
    by_module, everywhere, modules = _index()
    parts = dotted.split(".")
    last = parts[-1]
    if len(parts) == 1:
        return last in everywhere
    owner = parts[-2]
    if owner in by_module:  # module.attr: defined in that module (or a class of it)
        return last in by_module[owner] or ".".join(parts) in modules
    if ".".join(parts) in modules:
        return True
    # Class.attr / instance.attr (`tx.enqueue`, `ds.breaker_state`): defined somewhere.
    return last in everywhere


def test_every_function_and_class_the_guide_names_exists() -> None:
    missing = []
    for text in _ticked():
        if _PATH.match(text):
            continue
        call = _CALL.match(text)
        name = call.group(1) if call else None
        if name is None and (_DOTTED.match(text) or _CLASS.match(text)):
            name = text
        if name is None or name.split(".")[0] in _FOREIGN:
            continue
        if not _name_exists(name):
            missing.append(text)
    assert not missing, f"docs/internals.md names code that does not exist: {missing}"
