"""Secured (non-dev) nodes for tests: the account and principal most configs name, one node
started from a config as a module-scoped fixture, and a us-east-1/eu-west-1 pair peered
with each other. Nodes are real subprocesses (tests/support/server.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.support.server import ServerProcess, free_port

ACCOUNT = "111122223333"
ALICE = ("AKIAALICE00000000001", "alice-secret-key")
ALLOW_ALL = ('{"Version":"2012-10-17","Statement":'
             '[{"Effect":"Allow","Action":"kms:*","Resource":"*"}]}')


def secured_fixture(dir_name: str, write_config: Callable[[Path], Path], *,
                    logged: bool = False) -> Any:
    """A module-scoped fixture: a secured node on ``write_config(dir)``, its log lines kept
    in ``node.log`` when ``logged``, stopped after the module's last test."""
    @pytest.fixture(scope="module")
    def fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
        tmp = tmp_path_factory.mktemp(dir_name)
        server = ServerProcess(tmp / "d", dev=False,
                               log_path=tmp / "node.log" if logged else None,
                               extra=["--config", str(write_config(tmp))])
        server.start()
        yield server
        server.stop()
    return fixture


@contextmanager
def peered_pair(tmp_path: Path, config: str, *,
                logged: bool = True) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """Secured us-east-1 and eu-west-1 nodes on one config, each ``--peer`` to the other,
    their logs in ``us.log`` / ``eu.log`` when ``logged``; both stopped on the way out (they
    can still be read after)."""
    us_port, eu_port = free_port(), free_port()
    us = ServerProcess(tmp_path / "us", dev=False, region="us-east-1", port=us_port,
                       log_path=tmp_path / "us.log" if logged else None,
                       extra=["--config", config, "--peer", f"eu-west-1=http://127.0.0.1:{eu_port}"])
    eu = ServerProcess(tmp_path / "eu", dev=False, region="eu-west-1", port=eu_port,
                       log_path=tmp_path / "eu.log" if logged else None,
                       extra=["--config", config, "--peer", f"us-east-1=http://127.0.0.1:{us_port}"])
    us.start()
    try:
        eu.start()
        try:
            yield us, eu
        finally:
            eu.stop()
    finally:
        us.stop()
