"""The README's "What the tests prove" names, for each claim, the tests that prove it: every
named test must exist (a module under tests/ defining that test function), so a claim cannot
outlive its proof. And the tests reference only documents inside the repository."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from ops.process import REPO_ROOT

SECTION = "## What the tests prove"
_REF = re.compile(r"`(tests/[\w/]+\.py)::(\w+)`")


def _section(text: str) -> str:
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    return text[start:end if end != -1 else len(text)]


def _test_functions(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {node.name for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            and node.name.startswith("test_")}


def test_every_claim_names_tests_that_exist() -> None:
    section = _section((REPO_ROOT / "README.md").read_text())
    rows = [line for line in section.splitlines()
            if line.startswith("| ") and not line.startswith(("| claim", "| ---"))]
    assert len(rows) >= 10, "the README's claims table is missing"
    missing = []
    for row in rows:
        refs = _REF.findall(row)
        assert refs, f"a claim without a test: {row[:120]}"
        for module, function in refs:
            path = REPO_ROOT / module
            if not path.is_file() or function not in _test_functions(path):
                missing.append(f"{module}::{function}")
    assert missing == [], f"README names tests that do not exist: {missing}"


def test_the_check_sees_a_missing_test() -> None:
    """The parser above would notice a renamed test (it is not vacuous)."""
    fake = "| claim | `tests/faults/test_order_chaos.py::test_no_such_thing` |"
    ((module, function),) = _REF.findall(fake)
    assert function not in _test_functions(REPO_ROOT / module)
    assert "test_order_chaos" in _test_functions(REPO_ROOT / module)


def test_tests_cite_no_document_outside_the_repository() -> None:
    outside = "DESIGN" + ".md"  # the contract lives in docs/ and README.md, in the repo
    cited = [str(p.relative_to(REPO_ROOT)) for p in (REPO_ROOT / "tests").rglob("*.py")
             if outside in p.read_text()]
    assert cited == [], f"tests citing {outside}, which is not in the repository: {cited}"
    for doc in ("README.md", "docs/guarantees.md"):
        assert outside not in (REPO_ROOT / doc).read_text(), doc
