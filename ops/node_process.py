"""A node's process as the launcher sees it: still alive, still the node it started (not a
reused pid), healthy, and the end of its log.

Rules: read-only (signals are sent by ops.cluster.Cluster); a zombie counts as gone; a
health answer is the node's JSON or ``{"status": "unreachable"}``, never an exception.
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.error
import urllib.request
from pathlib import Path


def _alive(pid: int, proc: subprocess.Popen[bytes] | None = None) -> bool:
    if proc is not None:
        return proc.poll() is None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # an exited process nobody has reaped yet is gone for our purposes
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        ps = subprocess.run(["ps", "-o", "stat=", "-p", str(pid)], capture_output=True, text=True)
        return ps.returncode == 0 and not ps.stdout.strip().startswith("Z")


def _runs(pid: int, data_dir: Path) -> bool:
    """Whether ``pid`` is still the node on ``data_dir`` (not a reused pid)."""
    if not _alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        cmdline = subprocess.run(["ps", "-o", "args=", "-p", str(pid)],
                                 capture_output=True, text=True).stdout
    return str(data_dir) in cmdline


def health(url: str, timeout: float = 2.0) -> dict[str, object]:
    """GET /_kms/health; its JSON (a 503 answers JSON too), or {"status": "unreachable"}."""
    try:
        with urllib.request.urlopen(url + "/_kms/health", timeout=timeout) as r:
            doc: dict[str, object] = json.load(r)
    except urllib.error.HTTPError as exc:
        try:
            doc = json.load(exc)
        except ValueError:
            doc = {"status": f"http {exc.code}"}
    except (OSError, ValueError) as exc:
        return {"status": "unreachable", "error": str(getattr(exc, "reason", exc))}
    return doc


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"

