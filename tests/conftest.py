"""Shared test set-up: sockets off for unit tests, on for the integration tests.

Unit tests run with `--disable-socket --allow-unix-socket` (pyproject's addopts; the event
loop's self-pipe is a Unix socket). A unit test that starts its own server says so with
`@pytest.mark.allow_hosts(["127.0.0.1"])` and may reach loopback only. The integration tests
talk to real model servers, so their sockets are on.

The unit tests' fakes are plain modules imported by package path
(`from tests.unit.test_runnable_fakes import ...`): pytest puts the repository root on the path
(`pythonpath = ["."]`).
"""

from __future__ import annotations

from pathlib import Path

import pytest

_HERE = Path(__file__).parent
_LOOPBACK = ["127.0.0.1", "::1", "localhost"]

# Test files that listen on loopback themselves (the sandbox battery opens a listener to prove
# that a sandboxed program cannot reach it).
_LISTENS_ON_LOOPBACK = {"test_sandbox.py"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Turn sockets on for integration tests and loopback on where a file listens itself."""
    for item in items:
        path = Path(str(item.fspath))
        if _HERE / "integration" in path.parents:
            item.add_marker(pytest.mark.enable_socket)
        elif path.name in _LISTENS_ON_LOOPBACK and not item.get_closest_marker("allow_hosts"):
            item.add_marker(pytest.mark.allow_hosts(_LOOPBACK))
