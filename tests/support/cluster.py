"""The local 3-region cluster from compose.yaml (ops/cluster.py) as module-scoped fixtures,
and ``kms region ...`` run as an operator runs it. A test module binds the fixtures by name:
``cluster = cluster_fixture("failover")``, ``kms = clients_fixture()``."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ops.cluster import Cluster
from tests.conftest import client_for

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose.yaml"
US, EU, AP = "us-east-1", "eu-west-1", "ap-southeast-2"


def cluster_fixture(dir_name: str) -> Any:
    """A module-scoped fixture: the cluster up under a fresh ``dir_name`` directory, and down
    (quietly) after the module's last test."""
    @pytest.fixture(scope="module")
    def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
        started = Cluster.up(COMPOSE, tmp_path_factory.mktemp(dir_name))
        try:
            yield started
        finally:
            started.down(quiet=True)
    return cluster


def clients_fixture() -> Any:
    """A module-scoped fixture: a client per region, each at that region's own node."""
    @pytest.fixture(scope="module")
    def kms(cluster: Cluster) -> dict[str, Any]:
        return {r: client_for(url, region=r) for r, url in cluster.urls.items()}
    return kms


def region_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``kms region ...`` as an operator runs it."""
    return subprocess.run([sys.executable, "-m", "regions.cli", "region", *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "AWS_EC2_METADATA_DISABLED": "true",
                               "AWS_CONFIG_FILE": "/nonexistent",
                               "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"})
