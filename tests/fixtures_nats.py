"""Fixtures that start a real nats-server (port 0, temp store) and always stop it."""
