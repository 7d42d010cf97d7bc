"""Settings: every environment variable is declared once (services/common/envvars.py),
read only through it, read once at a process's start, and listed in the README."""

from __future__ import annotations

import ast
import contextvars
from pathlib import Path

import pytest

from ops import settingsdoc
from services.common import envvars

ROOT = Path(__file__).resolve().parents[2]
HOME = ROOT / "services" / "common" / "envvars.py"

# Tools that hand an environment to processes they start read os.environ themselves:
# what they pass on must be the whole environment plus their own additions, which a
# snapshot of declared variables would lose.
ALLOWED = {
    "ops/run.py": "the make run supervisor: its own knobs, then its environment to children",
    "ops/process.py": "builds each child's environment from its own",
    "ops/protogen.py": "protoc's PATH",
    "ops/shopctl.py": "finds make run's data dir; its environment to the calls it makes",
    "ops/mailcatcher.py": "a make run child outside the services' runtime",
    "ops/prefork.py": "make run's pre-imported parent: gives each fork the environment asked for",
}
ALLOWED_DIRS = {"bench": "benchmarks start the system with environments of their own"}
_READERS = {"env_str", "env_int", "env_float"}


def _sources() -> list[Path]:
    return [p for top in ("services", "gateway", "ops", "bench")
            for p in sorted((ROOT / top).rglob("*.py"))]


def _allowed(path: Path) -> bool:
    rel = path.relative_to(ROOT).as_posix()
    return path == HOME or rel in ALLOWED or rel.split("/")[0] in ALLOWED_DIRS


def _touches_environ(node: ast.AST) -> bool:
    if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv", "environb"):
        return isinstance(node.value, ast.Name) and node.value.id == "os"
    if isinstance(node, ast.ImportFrom) and node.module == "os":
        return any(a.name in ("environ", "getenv") for a in node.names)
    return False


def test_only_envvars_reads_the_environment() -> None:
    found = [f"{p.relative_to(ROOT)}:{getattr(n, 'lineno', 0)}" for p in _sources()
             if not _allowed(p)
             for n in ast.walk(ast.parse(p.read_text())) if _touches_environ(n)]
    assert not found, (f"os.environ read outside services/common/envvars.py: {found}; "
                       "declare the variable there and read it with its Var")


# The settings loaders: a service or gateway process reads its variables there, once at
# start; everything else is handed the values (services/common/config.py's sections).
LOADERS = {"services/common/envvars.py", "services/common/settings.py", "gateway/config.py"}
_VAR_NAMES = frozenset(name for name, value in vars(envvars).items()
                       if isinstance(value, envvars.Var))
_READ_BY_NAME = {"raw_value", "env_str", "env_int", "env_float"}


def _var_reads(tree: ast.AST) -> list[int]:
    """Lines that read a variable: `<Var>.get(...)`/`.raw(...)` (envvars.X.get(), or X
    imported), or the by-name readers (`raw_value`, `env_*`)."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr in ("get", "raw"):
            owner = func.value
            name = (owner.attr if isinstance(owner, ast.Attribute)
                    else owner.id if isinstance(owner, ast.Name) else "")
            if name in _VAR_NAMES:
                found.append(node.lineno)
        name = func.attr if isinstance(func, ast.Attribute) else (
            func.id if isinstance(func, ast.Name) else "")
        if name in _READ_BY_NAME:
            found.append(node.lineno)
    return found


def test_the_scan_finds_a_variable_read() -> None:
    code = ("from services.common import envvars\n"
            "from services.common.envvars import SHOP_MTLS\n"
            "a = envvars.SHOP_BREAKER_FAIL_MAX.get()\n"
            "b = SHOP_MTLS.get()\n"
            "c = envvars.SERVICE_ADDR.raw('order')\n"
            "d = env_int('SHOP_X', 1)\n"
            "e = {}.get('SHOP_MTLS')\n")
    assert _var_reads(ast.parse(code)) == [3, 4, 5, 6]


def test_processes_read_variables_only_in_the_settings_loaders() -> None:
    found = [f"{p.relative_to(ROOT)}:{line}"
             for top in ("services", "gateway") for p in sorted((ROOT / top).rglob("*.py"))
             if p.relative_to(ROOT).as_posix() not in LOADERS
             for line in _var_reads(ast.parse(p.read_text()))]
    assert not found, ("a variable read outside the settings loaders (load_settings, "
                       "load_gateway_settings): read it there into the process's Settings "
                       f"and pass the value in: {found}")


def _literal_names(path: Path) -> list[tuple[str, int]]:
    """Variable names read by string: env_*("X", ...) and os.environ.get("X")/["X"]."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        arg: ast.expr | None = None
        if isinstance(node, ast.Call) and node.args:
            func = node.func
            name = func.id if isinstance(func, ast.Name) else (
                func.attr if isinstance(func, ast.Attribute) else "")
            environ_get = (name == "get" and isinstance(func, ast.Attribute)
                           and _touches_environ(func.value))
            if name in _READERS or environ_get:
                arg = node.args[0]
        elif isinstance(node, ast.Subscript) and _touches_environ(node.value):
            arg = node.slice
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            out.append((arg.value, getattr(node, "lineno", 0)))
    return out


def test_every_variable_read_is_declared() -> None:
    undeclared = [f"{name} ({p.relative_to(ROOT)}:{line})" for p in _sources()
                  for name, line in _literal_names(p) if envvars.declared(name) is None]
    assert not undeclared, ("read but not declared in services/common/envvars.py (add a "
                            f"line there, then python -m ops.settingsdoc): {undeclared}")


def test_every_declared_variable_is_read_somewhere() -> None:
    code = "\n".join(p.read_text() for p in _sources() if p != HOME)
    constants = {name for name, value in vars(envvars).items() if isinstance(value, envvars.Var)}
    unread = []
    for const in sorted(constants):
        var = getattr(envvars, const)
        # `env(v.X)`: a config section's field, which `settings.section` reads (a unit
        # test sets each one and finds its value in the loaded settings).
        by_var = (f"envvars.{const}" in code or f"{const}.get(" in code
                  or f"env(v.{const})" in code)
        if not by_var and f'"{var.name}"' not in code:
            unread.append(var.name)
    assert not unread, f"declared but never read (drop them or read them): {unread}"


def test_the_readme_table_is_the_declared_one() -> None:
    readme = settingsdoc.README.read_text()
    assert settingsdoc.render(readme) == readme, (
        "README.md's settings table differs from envvars.py: run python -m ops.settingsdoc")
    for var in envvars.VARIABLES:
        assert f"| `{var.name}` |" in readme


def test_a_process_reads_its_environment_once_at_start(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOP_BREAKER_FAIL_MAX", "7")
    monkeypatch.setenv("ORDER_PORT", "6001")

    def process() -> tuple[int, int | None]:
        envvars.read_once("order")
        monkeypatch.setenv("SHOP_BREAKER_FAIL_MAX", "9")  # too late: the start has read
        return envvars.SHOP_BREAKER_FAIL_MAX.get(), envvars.SERVICE_PORT.get("order")

    assert contextvars.copy_context().run(process) == (7, 6001)
    # Outside that process's context the environment is read as it is now.
    assert envvars.SHOP_BREAKER_FAIL_MAX.get() == 9


def test_a_malformed_variable_stops_the_start_naming_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOP_SAGA_LEASE_S", "ten")
    ctx = contextvars.copy_context()
    with pytest.raises(ValueError, match="SHOP_SAGA_LEASE_S must be a number"):
        ctx.run(envvars.read_once, "order")
    # Another process does not read it, so it starts.
    contextvars.copy_context().run(envvars.read_once, "payment")


def test_a_rate_limit_set_empty_is_off_not_the_default(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GATEWAY_RATE_LIMIT", raising=False)
    assert envvars.GATEWAY_RATE_LIMIT.get() == "10000/second"
    monkeypatch.setenv("GATEWAY_RATE_LIMIT", "")
    assert envvars.GATEWAY_RATE_LIMIT.get() == ""
