"""`make run`'s lines for the storefront, the console and the admin's password."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from ops.run import print_web


def test_the_password_is_shown_only_by_the_start_that_made_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SHOP_ADMIN_PASSWORD", raising=False)
    path = tmp_path / "admin-password"
    path.write_text("s3cret-pass\n")
    started = time.time() - 2.0  # this start began before the file was written
    print_web("http://localhost:8080", tmp_path, started=started)
    out = capsys.readouterr().out
    assert "storefront: http://localhost:8080/" in out
    assert "console:    http://localhost:8080/console" in out
    assert f"admin password: s3cret-pass  (shown once; kept in {path})" in out

    old = time.time() - 3600
    os.utime(path, (old, old))  # written by an earlier start
    print_web("http://localhost:8080", tmp_path, started=time.time())
    out = capsys.readouterr().out
    assert "s3cret-pass" not in out and f"admin password: in {path}" in out

    monkeypatch.setenv("SHOP_ADMIN_PASSWORD", "from-env-pw")
    print_web("http://localhost:8080", tmp_path, started=started)
    out = capsys.readouterr().out
    assert "from SHOP_ADMIN_PASSWORD" in out and "from-env-pw" not in out
