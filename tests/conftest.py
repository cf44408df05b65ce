"""Shared fixtures: one dev-mode node per test session, reset before every test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from botocore.config import Config

from tests.support.server import ServerProcess

REGION = "us-east-1"
ACCOUNT = "111122223333"


def client_for(url: str, *, validate: bool = True, region: str = REGION,
               access_key: str = "AKIDEXAMPLE", secret: str = "secret") -> object:
    return boto3.client(
        "kms", endpoint_url=url, region_name=region,
        aws_access_key_id=access_key, aws_secret_access_key=secret,
        config=Config(parameter_validation=validate, retries={"max_attempts": 1}),
    )


@pytest.fixture(scope="session")
def dev_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path_factory.mktemp("dev-node")).start()
    yield server
    server.stop()


@pytest.fixture
def server(dev_server: ServerProcess) -> ServerProcess:
    dev_server.reset()
    return dev_server


@pytest.fixture
def kms(server: ServerProcess):  # type: ignore[no-untyped-def]
    """A boto3 KMS client against a freshly reset dev node."""
    return client_for(server.url)


@pytest.fixture
def raw_kms(server: ServerProcess):  # type: ignore[no-untyped-def]
    """The same, with botocore's client-side validation off, so the server's is tested."""
    return client_for(server.url, validate=False)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"
