"""Regions through ``kms serve``: the topology's refusals, every region a request is signed
for hosted in one ``--dev`` process, and forwarding to a peer's node."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.server import free_port

pytestmark = pytest.mark.slow


def serve(*argv: str) -> subprocess.CompletedProcess[str]:
    """Run ``kms serve`` (the console script's module) expecting it to refuse and exit."""
    return subprocess.run([sys.executable, "-m", "regions.cli", "serve", *argv],
                          capture_output=True, text=True, timeout=60, env={**os.environ})


@pytest.mark.parametrize(("peer_args", "toml", "message"), [
    (["--peer", "eu-west-1"], "", "--peer 'eu-west-1': expected REGION=URL"),
    (["--peer", "us-east-1=http://127.0.0.1:9"], "", "us-east-1 is this node's own region"),
    (["--peer", "eu-west-1=http://127.0.0.1:9", "--peer", "eu-west-1=http://127.0.0.1:8"], "",
     "region eu-west-1 is named by another --peer"),
    (["--peer", "eu-west-1=ftp://127.0.0.1:9"], "", "is not http(s)://host[:port]"),
    ([], '[[peers]]\nregion = "eu-west-1"\nurl = "http://a:1"\n'
         '[[peers]]\nregion = "eu-west-1"\nurl = "http://b:1"\n',
     "[[peers]]: region eu-west-1 is named twice"),
])
def test_a_topology_mistake_exits_2_with_one_line_and_creates_nothing(
        tmp_path: Path, peer_args: list[str], toml: str, message: str) -> None:
    config = tmp_path / "kms.toml"
    config.write_text(toml)
    data_dir = tmp_path / "data"
    done = serve("--port", str(free_port()), "--region", "us-east-1", "--data-dir",
                 str(data_dir), "--config", str(config), *peer_args)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1 and message in done.stderr
    assert done.stderr.startswith("kms: error: configuration: ")
    assert not data_dir.exists()
