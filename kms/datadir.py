"""The data dir's guards at start: one process at a time, one region and account, one root key.

Rules: the lock (``flock`` on ``kms.lock``, the holder's pid inside) is taken before anything
else in the dir is read or written and held for the life of the process; ``node.json`` binds
the dir to its region and account; ``root-check`` (a constant sealed under the root key) proves
the configured root key is the one the dir was sealed with; a dir that holds anything sealed
never gets a fresh root key. A refusal writes nothing but the lock file (and nothing at all
when ``KMS_ROOT_KEY`` is malformed, which is checked first).
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from kms.crypto.sealing import ROOT_KEY_ENV, ROOT_KEY_FILE, RootKey, RootKeyMissing
from kms.files import create_secret_file

LOCK_FILE = "kms.lock"
IDENTITY_FILE = "node.json"
ROOT_CHECK_FILE = "root-check"
LOG_FILE = "events.sqlite3"


class DataDirRefused(Exception):
    """The node must not start on this data dir; the message says why, in one line."""


@dataclass(frozen=True, slots=True)
class DataDir:
    """An opened data dir: held by this process, bound to a region and account."""

    path: Path
    root_key: RootKey
    lock_fd: int  # open for the life of the process: closing it releases the lock


def open_data_dir(path: Path, *, region: str, account_id: str) -> DataDir:
    """Lock ``path``, check it belongs to ``region``/``account_id`` and that the root key
    opens it; on first start record both. Raises DataDirRefused."""
    try:
        RootKey.from_env()  # a malformed KMS_ROOT_KEY is a setting's mistake: refuse first
    except ValueError as exc:
        raise DataDirRefused(str(exc)) from None
    lock_fd = _lock(path)
    try:
        _check_identity(path, region, account_id)
        root_key = _root_key(path)
        _record(path, region, account_id, root_key)
    except BaseException:
        os.close(lock_fd)
        raise
    return DataDir(path, root_key, lock_fd)


def _lock(path: Path) -> int:
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)  # sealed material inside
        fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise DataDirRefused(f"cannot open data dir {path}: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise DataDirRefused(f"data dir {path} is in use by another kms process "
                             f"(pid {holder})") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _check_identity(path: Path, region: str, account_id: str) -> None:
    identity = _read_identity(path)
    if identity is None:
        return
    theirs = (identity.get("region"), identity.get("account_id"))
    if theirs != (region, account_id):
        raise DataDirRefused(
            f"data dir {path} belongs to region {theirs[0]}, account {theirs[1]}; "
            f"refusing to serve it as region {region}, account {account_id}")


def _read_identity(path: Path) -> dict[str, object] | None:
    try:
        doc = json.loads((path / IDENTITY_FILE).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise DataDirRefused(f"cannot read {path / IDENTITY_FILE}: {exc}") from None
    if not isinstance(doc, dict):
        raise DataDirRefused(f"cannot read {path / IDENTITY_FILE}: not a JSON object")
    return doc


def _root_key(path: Path) -> RootKey:
    check_path = path / ROOT_CHECK_FILE
    sealed = check_path.read_bytes() if check_path.exists() else None
    in_use = sealed is not None or (path / IDENTITY_FILE).exists() or _log_has_rows(path)
    try:
        root_key = RootKey.load_or_create(path, create=not in_use)
    except RootKeyMissing:
        raise DataDirRefused(
            f"data dir {path} holds keys sealed under a root key, but neither {ROOT_KEY_ENV} "
            f"is set nor {path / ROOT_KEY_FILE} exists; restore that root key "
            "(a new one could open nothing here)") from None
    except ValueError as exc:  # malformed: the message says what is wrong with it
        raise DataDirRefused(str(exc)) from None
    if sealed is not None and not root_key.opens_check(sealed):
        raise DataDirRefused(
            f"the root key from {RootKey.source(path)} is not the one data dir {path} "
            f"was sealed with ({check_path} does not open under it); "
            "start with the original root key")
    return root_key


def _log_has_rows(path: Path) -> bool:
    """Whether the event log holds anything; an unreadable log counts as holding data."""
    log_path = path / LOG_FILE
    if not log_path.exists():
        return False
    try:
        db = sqlite3.connect(f"file:{log_path}?mode=ro", uri=True)
        try:
            return db.execute("SELECT 1 FROM events LIMIT 1").fetchone() is not None
        finally:
            db.close()
    except sqlite3.OperationalError as exc:
        return "no such table" not in str(exc)
    except sqlite3.Error:
        return True


def _record(path: Path, region: str, account_id: str, root_key: RootKey) -> None:
    """On first start (or the first start of a dir made before these files), bind it."""
    if not (path / IDENTITY_FILE).exists():
        doc = {"region": region, "account_id": account_id}
        create_secret_file(path / IDENTITY_FILE, (json.dumps(doc, indent=2) + "\n").encode())
    if not (path / ROOT_CHECK_FILE).exists():
        create_secret_file(path / ROOT_CHECK_FILE, root_key.seal_check())
