"""Start a real node as a subprocess on a free loopback port, and stop it.

Tests drive it with real clients (boto3, the AWS CLI); nothing here mocks it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    def __init__(self, data_dir: Path, *, dev: bool = True, region: str = "us-east-1",
                 port: int | None = None, extra: list[str] | None = None,
                 env: dict[str, str] | None = None, log_path: Path | None = None) -> None:
        self.data_dir = data_dir
        self.log_path = log_path  # where the node's log lines (stderr) go; None: discarded
        self.dev = dev
        self.region = region
        self.port = port or free_port()
        self.extra = extra or []
        self.env = env
        self.proc: subprocess.Popen[str] | None = None
        self.output = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        """The ``kms serve`` command line this node runs."""
        args = [sys.executable, "-m", "regions.cli", "serve", "--host", "127.0.0.1",
                "--port", str(self.port), "--region", self.region,
                "--data-dir", str(self.data_dir), "--log-format", "json", *self.extra]
        return [*args, "--dev"] if self.dev else args

    def start(self, timeout: float = 60.0) -> ServerProcess:  # a bound, not a timing test
        env = {**os.environ, **(self.env or {})}
        if self.log_path is None:
            self.proc = subprocess.Popen(self.command(), stdout=subprocess.PIPE,
                                         stderr=subprocess.DEVNULL, text=True, env=env)
        else:
            with self.log_path.open("a") as sink:  # the child keeps its own descriptor
                self.proc = subprocess.Popen(self.command(), stdout=subprocess.PIPE,
                                             stderr=sink, text=True, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"node exited with {self.proc.returncode}")
            try:
                with urllib.request.urlopen(self.url + "/_kms/health", timeout=1) as r:
                    if json.load(r).get("status") == "ok":
                        return self
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("node did not become healthy")

    def log_lines(self) -> list[dict[str, Any]]:
        """The node's JSON log lines so far (``log_path`` must be set)."""
        assert self.log_path is not None
        lines = self.log_path.read_text().splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    def read_stdout(self) -> str:
        """What the node printed (only after it stopped)."""
        return self.output

    def health(self) -> dict[str, object]:
        with urllib.request.urlopen(self.url + "/_kms/health", timeout=5) as r:
            result: dict[str, object] = json.load(r)
            return result

    def post(self, path: str, body: dict[str, object] | None = None) -> dict[str, object]:
        req = urllib.request.Request(self.url + path, data=json.dumps(body or {}).encode(),
                                     method="POST", headers={"Content-Type": "application/json"})
        # A bound for a stuck node, not a timing assertion (a loaded machine is slow).
        with urllib.request.urlopen(req, timeout=60) as r:
            result: dict[str, object] = json.load(r)
            return result

    def reset(self) -> None:
        self.post("/_kms/reset")

    def stop(self) -> None:
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        self._end(signal.SIGKILL)

    def _end(self, sig: int) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            out, _ = self.proc.communicate(timeout=60)  # a bound for a stuck stop
        except subprocess.TimeoutExpired:
            print(f"node on port {self.port} did not stop on signal {sig} within 60 s: "
                  "killed", file=sys.stderr)  # shown with a failing test's output
            self.proc.kill()
            out, _ = self.proc.communicate()
        self.output += out or ""
        self.proc = None
