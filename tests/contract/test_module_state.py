"""services/common keeps no module-level mutable state beyond the few listed here, each
with the reason it is still there (today none): anything new fails this test.

Found: a module-level name bound to a mutable container (dict, list, set, their
constructors, a WeakValueDictionary), to an instance of a class of the module, or
rebound by a function (`global`). UPPER_CASE names are constants, never changed after
import (tables, options). ContextVars are not state of the module: a value
bound in one context (a process's main task, a request) is seen only there.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COMMON = ROOT / "services" / "common"

# name -> why it is still module-level (none: what a process shares is made by its
# composition root, services/common/wiring.py, and passed in).
STILL_THERE: dict[str, str] = {}
_CONTAINERS = {"dict", "list", "set", "defaultdict", "deque", "WeakValueDictionary",
               "WeakKeyDictionary", "OrderedDict"}


def _mutable(value: ast.expr, local_classes: set[str]) -> bool:
    if isinstance(value, ast.Dict | ast.List | ast.Set | ast.DictComp | ast.ListComp
                  | ast.SetComp):
        return True
    if isinstance(value, ast.Call):
        func = value.func
        name = func.attr if isinstance(func, ast.Attribute) else (
            func.id if isinstance(func, ast.Name) else "")
        return name in _CONTAINERS or name in local_classes
    return False


def _state(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    classes = {n.name for n in tree.body if isinstance(n, ast.ClassDef)}
    found: set[str] = set()
    for node in tree.body:
        targets: list[ast.expr] = []
        value: ast.expr | None = None
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        for target in targets:
            if (isinstance(target, ast.Name) and not target.id.isupper()
                    and target.id != "__all__" and value is not None
                    and _mutable(value, classes)):
                found.add(target.id)
    for inner in ast.walk(tree):
        if isinstance(inner, ast.Global):
            found.update(inner.names)
    return {f"{path.stem}.{name}" for name in found}


def test_no_new_module_level_state_in_services_common() -> None:
    found = set().union(*(_state(p) for p in sorted(COMMON.glob("*.py"))))
    assert found - set(STILL_THERE) == set(), (
        "module-level mutable state in services/common: pass it in from the composition "
        f"root instead: {sorted(found - set(STILL_THERE))}")
    # An entry whose state is gone leaves the list too.
    assert set(STILL_THERE) - found == set(), sorted(set(STILL_THERE) - found)
