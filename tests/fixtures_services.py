"""Fixtures that start real service processes (port 0, temp data dir) and always stop them."""
