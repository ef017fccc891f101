"""Shared fixtures live in tests/fixtures/, one module per real dependency."""

pytest_plugins = [
    "tests.fixtures.trees",
    "tests.fixtures.sshd",
    "tests.fixtures.maclike",
    "tests.fixtures.postgres",
    "tests.fixtures.redis",
    "tests.fixtures.stack",
    "tests.fixtures.system",
    "tests.fixtures.docker",
]
