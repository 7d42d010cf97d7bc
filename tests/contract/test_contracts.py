"""The contracts: generated code is current, buf lint passes, no breaking change."""

from __future__ import annotations

import filecmp
import subprocess
import sys
from pathlib import Path

from ops import protogen

ROOT = Path(__file__).resolve().parents[2]
BUF = Path(sys.executable).parent / "buf"


def _tree(root: Path) -> set[str]:
    # Bytecode caches are not generated code (importing gen/ writes them).
    return {
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and p.name != ".stamp" and "__pycache__" not in p.parts
    }


def test_generated_code_is_current(tmp_path: Path) -> None:
    fresh = tmp_path / "gen"
    protogen.generate(fresh)
    committed = ROOT / "gen"
    assert _tree(fresh) == _tree(committed), "gen/ is stale: run `make proto`"
    stale = [
        rel for rel in sorted(_tree(fresh))
        if not filecmp.cmp(fresh / rel, committed / rel, shallow=False)
    ]
    assert stale == [], f"gen/ is stale ({stale}): run `make proto`"


def _buf(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BUF), *args], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )


def test_buf_lint_passes() -> None:
    result = _buf("lint")
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_breaking_change_against_released_contracts() -> None:
    image = ROOT / "proto" / "released.binpb"
    assert image.is_file(), "the released contract image is missing: run `make release-contracts`"
    result = _buf("breaking", "proto", "--against", str(image))
    assert result.returncode == 0, "breaking change:\n" + result.stdout + result.stderr


def test_breaking_check_detects_a_removed_field(tmp_path: Path) -> None:
    # The check itself must be able to fail: drop a field from a copy of a contract.
    import shutil

    work = tmp_path / "ws"
    shutil.copytree(ROOT / "proto", work / "proto")
    shutil.copy(ROOT / "buf.yaml", work / "buf.yaml")
    (work / "proto_deps" / "google").mkdir(parents=True)
    api_protos = (ROOT / "proto_deps" / "google" / "api").resolve()
    (work / "proto_deps" / "google" / "api").symlink_to(api_protos)
    target = work / "proto" / "shop" / "order" / "v1" / "order.proto"
    text = target.read_text()
    target.write_text(text.replace("  string cancel_reason = 7;\n", ""))
    result = subprocess.run(
        [str(BUF), "breaking", "proto", "--against", str(ROOT / "proto" / "released.binpb")],
        cwd=work, capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode != 0
    assert "cancel_reason" in result.stdout + result.stderr
