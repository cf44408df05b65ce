"""Module-scoped fixtures for API test modules that create their keys once: one reset of
the session's dev node per module, and clients for it (with and without botocore's
client-side validation)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import client_for
from tests.support.server import ServerProcess


@pytest.fixture(scope="module")
def node(dev_server: ServerProcess) -> ServerProcess:
    dev_server.reset()
    return dev_server


@pytest.fixture(scope="module")
def client(node: ServerProcess) -> Any:
    return client_for(node.url)


@pytest.fixture(scope="module")
def raw(node: ServerProcess) -> Any:
    """botocore's client-side validation off, so the server's own checks are reached."""
    return client_for(node.url, validate=False)
