"""Shared fixtures. Each area keeps its fixtures in tests/fixtures/<area>.py."""

pytest_plugins = [
    "tests.fixtures.services",
    "tests.fixtures.keyvault",
    "tests.fixtures.reports",
]
