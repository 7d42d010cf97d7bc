"""Helper processes started by tests."""
