"""Durable creation of the node's small secret files (root key, credentials).

Rules: created exclusively with mode 0600, the file and its directory fsynced, so a
crash right after first start cannot keep the log but lose the key that opens it.
"""

from __future__ import annotations

import os
from pathlib import Path


def create_secret_file(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
