"""A tiny program for the pre-imported parent's tests (tests/integration/test_prefork.py)."""
