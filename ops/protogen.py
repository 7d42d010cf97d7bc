"""Generate gen/ (messages, grpc stubs, .pyi stubs) from proto/.

Run by `make proto`. The output is deterministic, so a test can regenerate it
into a temp dir and compare with the committed gen/.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import google.api.annotations_pb2
import grpc_tools

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"


def proto_files() -> list[Path]:
    return sorted(PROTO_DIR.rglob("*.proto"))


def generate(out_dir: Path) -> None:
    """Compile every contract in proto/ into out_dir (replaced whole)."""
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    googleapis_root = Path(google.api.annotations_pb2.__file__).resolve().parent.parent.parent
    wkt_root = Path(grpc_tools.__file__).resolve().parent / "_proto"
    files = [str(p.relative_to(PROTO_DIR)) for p in proto_files()]
    args = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{PROTO_DIR}",
        f"-I{googleapis_root}",
        f"-I{wkt_root}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        *files,
    ]
    # protoc-gen-mypy lives beside the interpreter in the venv; it reports every file it
    # writes on stderr, so the output is shown only when protoc fails.
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    result = subprocess.run(
        args, cwd=PROTO_DIR, env=env, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise SystemExit(f"protoc failed ({result.returncode}):\n{result.stdout}{result.stderr}")
    for pkg_dir in sorted({p.parent for p in out_dir.rglob("*.py")} | {out_dir / "shop"}):
        d = pkg_dir
        while d != out_dir:
            (d / "__init__.py").touch()
            d = d.parent
    (out_dir / "shop" / "py.typed").touch()


def main() -> None:
    generate(ROOT / "gen")
    print(f"generated gen/ from {len(proto_files())} contracts")


if __name__ == "__main__":
    main()
