"""Shared fixtures: real NATS, real service processes, always stopped afterwards."""

from tests.fixtures_nats import *  # noqa: F403
from tests.fixtures_services import *  # noqa: F403
from tests.fixtures_storage import *  # noqa: F403

pytest_plugins = ["tests.fixtures_pki"]
