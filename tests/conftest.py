"""Shared pytest wiring. Fixtures live in tests/support/*, one module per real part they start."""

pytest_plugins = [
    "tests.support.server",
    "tests.support.coturn",
    "tests.support.tornet",
    "tests.support.browsers",
    "tests.support.webclient",
    "tests.support.onion_up",
    "tests.support.redis_server",
]
