"""The PostgreSQL backend's small text helpers: placeholders, status counts, redaction."""

from __future__ import annotations

from services.common.pg import _rowcount, redact, to_dollar


def test_question_marks_become_numbered_parameters_outside_literals() -> None:
    assert to_dollar("SELECT a FROM t WHERE b = ? AND c IN (?, ?)") == \
        "SELECT a FROM t WHERE b = $1 AND c IN ($2, $3)"
    assert to_dollar("SELECT '?' || ? FROM t") == "SELECT '?' || $1 FROM t"
    assert to_dollar("SELECT 1") == "SELECT 1"


def test_rowcount_from_the_command_tag() -> None:
    assert _rowcount("UPDATE 3") == 3
    assert _rowcount("INSERT 0 1") == 1
    assert _rowcount("DELETE 0") == 0
    assert _rowcount("CREATE TABLE") == 0


def test_redact_drops_the_password_only() -> None:
    assert redact("postgresql://shop:s3cret@db:5432/shop_order") == \
        "postgresql://shop@db:5432/shop_order"
    assert redact("postgresql://postgres@/shop_user?host=/tmp/pg") == \
        "postgresql://postgres@/shop_user?host=/tmp/pg"
