"""The data dir's guards at start: one process at a time, one region and account, one root key.

Rules: the lock (``flock`` on ``kms.lock``, the holder's pid inside) is taken before anything
else in the dir is read or written and held for the life of the process; ``node.json`` binds
the dir to its region and account; ``root-check`` (a constant sealed under the root key) proves
the configured root key is the one the dir was sealed with; a dir that holds anything sealed
never gets a fresh root key. A dir from before these files is bound only to what its log
proves: the region and account its rows name, a root key that opens its vault. A refusal
writes nothing but the lock file (and nothing at all when ``KMS_ROOT_KEY`` is malformed,
which is checked first). Key files sealed under the root key (``create_sealed_file``,
``read_sealed_file``) refuse the same way when they do not open.
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import json
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from kms.crypto.keyring import kek_context
from kms.crypto.sealing import ROOT_KEY_ENV, ROOT_KEY_FILE, RootKey, RootKeyMissing, Sealer
from kms.domain import events as ev
from kms.domain.errors import KMSInternalException
from kms.files import create_secret_file

LOCK_FILE = "kms.lock"
IDENTITY_FILE = "node.json"
ROOT_CHECK_FILE = "root-check"
LOG_FILE = "events.sqlite3"


class DataDirRefused(Exception):
    """The node must not start on this data dir; the message says why, in one line."""


class DataDirInUse(Exception):
    """Another process holds the data dir's lock; ``holder`` is the pid it wrote there."""

    def __init__(self, holder: str) -> None:
        super().__init__(holder)
        self.holder = holder


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
        # Read the log only for a dir that lacks a guard file: the log is its only witness.
        facts = (_LogFacts.read(path) if not (path / IDENTITY_FILE).exists()
                 or not (path / ROOT_CHECK_FILE).exists() else None)
        _check_identity(path, region, account_id, facts)
        root_key = _root_key(path, facts)
        _record(path, region, account_id, root_key)
    except BaseException:
        os.close(lock_fd)
        raise
    return DataDir(path, root_key, lock_fd)


def take_lock(path: Path) -> int:
    """An fd of ``path``'s lock file (created 0600) holding its ``flock``; closing it
    releases the lock. OSError if the file cannot be opened, DataDirInUse if it is held."""
    fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise DataDirInUse(holder) from None
    return fd


def _lock(path: Path) -> int:
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)  # sealed material inside
        fd = take_lock(path)
    except DataDirInUse as exc:
        raise DataDirRefused(f"data dir {path} is in use by another kms process "
                             f"(pid {exc.holder})") from None
    except OSError as exc:
        raise DataDirRefused(f"cannot open data dir {path}: {exc.strerror or exc}") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


@dataclass(frozen=True, slots=True)
class _LogFacts:
    """What a data dir's event log says about it, read without writing to it."""

    has_rows: bool
    region: str | None = None  # origin region of the first row
    account: str | None = None  # account of the first KeyCreated
    vault_entry: tuple[str, bytes] | None = None  # one (vault id, wrapped KEK)

    @classmethod
    def read(cls, path: Path) -> _LogFacts:
        """The facts, or a refusal when the log exists but cannot be read."""
        log_path = path / LOG_FILE
        if not log_path.exists():
            return cls(has_rows=False)
        try:
            db = _open_for_reading(log_path)
        except sqlite3.Error as exc:
            raise DataDirRefused(f"cannot read {log_path}: {exc}") from None
        try:
            return cls._query(db)
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):  # created, never written: nothing to witness
                return cls(has_rows=False)
            raise DataDirRefused(f"cannot read {log_path}: {exc}") from None
        except (sqlite3.Error, ValueError, TypeError, KeyError) as exc:
            raise DataDirRefused(f"cannot read {log_path}: {exc}") from None
        finally:
            db.close()

    @classmethod
    def _query(cls, db: sqlite3.Connection) -> _LogFacts:
        first = db.execute("SELECT origin_region FROM events ORDER BY seq LIMIT 1").fetchone()
        if first is None:
            return cls(has_rows=False)
        created = db.execute("SELECT type, body FROM events WHERE type = ? ORDER BY seq LIMIT 1",
                             (ev.KeyCreated.__name__,)).fetchone()
        account = None
        if created is not None:
            event = ev.decode(str(created[0]), bytes(created[1]))
            account = str(event.account) if isinstance(event, ev.KeyCreated) else None
        entry = db.execute("SELECT key_id, wrapped FROM vault LIMIT 1").fetchone()
        return cls(has_rows=True, region=str(first[0]), account=account,
                   vault_entry=(str(entry[0]), bytes(entry[1])) if entry else None)


def _open_for_reading(log_path: Path) -> sqlite3.Connection:
    """Read-only if SQLite allows it (a WAL database needs its -shm for that); else an
    ordinary connection that this module only ever reads through."""
    try:
        db = sqlite3.connect(f"file:{log_path}?mode=ro", uri=True)
        try:
            db.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchone()
        except sqlite3.Error:
            db.close()
            raise
        return db
    except sqlite3.OperationalError:
        return sqlite3.connect(log_path)


def _check_identity(path: Path, region: str, account_id: str,
                    facts: _LogFacts | None) -> None:
    identity = _read_identity(path)
    if identity is not None:
        theirs: tuple[object, object] = (identity.get("region"), identity.get("account_id"))
    elif facts is not None and facts.has_rows:  # a dir from before node.json: its log says
        theirs = (facts.region, facts.account or account_id)
    else:
        return
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


def _root_key(path: Path, facts: _LogFacts | None) -> RootKey:
    check_path = path / ROOT_CHECK_FILE
    sealed = check_path.read_bytes() if check_path.exists() else None
    in_use = (sealed is not None or (path / IDENTITY_FILE).exists()
              or (facts is not None and facts.has_rows))
    try:
        root_key = RootKey.load_or_create(path, create=not in_use)
    except RootKeyMissing:
        raise DataDirRefused(
            f"data dir {path} holds keys sealed under a root key, but neither {ROOT_KEY_ENV} "
            f"is set nor {path / ROOT_KEY_FILE} exists; restore that root key "
            "(a new one could open nothing here)") from None
    except ValueError as exc:  # malformed: the message says what is wrong with it
        raise DataDirRefused(str(exc)) from None
    if sealed is not None:
        if not root_key.opens_check(sealed):
            _wrong_root_key(path, f"{check_path} does not open under it")
    elif facts is not None and facts.vault_entry is not None:
        # A dir from before root-check: the key it records must first open the vault.
        vault_id, wrapped = facts.vault_entry
        if not root_key.opens(wrapped, kek_context(vault_id)):
            _wrong_root_key(path, f"the key vault in {path / LOG_FILE} does not open under it")
    return root_key


def _wrong_root_key(path: Path, evidence: str) -> NoReturn:
    raise DataDirRefused(
        f"the root key from {RootKey.source(path)} is not the one data dir {path} "
        f"was sealed with ({evidence}); start with the original root key")


def _record(path: Path, region: str, account_id: str, root_key: RootKey) -> None:
    """On first start (or the first start of a dir made before these files), bind it."""
    if not (path / IDENTITY_FILE).exists():
        doc = {"region": region, "account_id": account_id}
        create_secret_file(path / IDENTITY_FILE, (json.dumps(doc, indent=2) + "\n").encode())
    if not (path / ROOT_CHECK_FILE).exists():
        create_secret_file(path / ROOT_CHECK_FILE, root_key.seal_check())


def create_sealed_file(path: Path, root_key: Sealer, material: bytes, context: bytes) -> bool:
    """Seal ``material`` under ``root_key`` (AD ``context``) into a new 0600 file at ``path``,
    base64 on one line; False if it exists already (another starter won the race: its file
    is the one that counts)."""
    try:
        create_secret_file(path, base64.b64encode(root_key.seal(material, context)) + b"\n")
    except FileExistsError:
        return False
    return True


def read_sealed_file(path: Path, root_key: Sealer, context: bytes, what: str) -> bytes:
    """The material ``create_sealed_file`` sealed into ``path``; DataDirRefused if it cannot be
    read, is not base64 (then it is "not {what}"), or does not open under ``root_key``."""
    try:
        sealed = base64.b64decode(path.read_bytes().strip(), validate=True)
    except OSError as exc:
        raise DataDirRefused(f"cannot read {path}: {exc.strerror or exc}") from None
    except (binascii.Error, ValueError):
        raise DataDirRefused(f"{path} is not {what} (not base64)") from None
    try:
        return root_key.unseal(sealed, context)
    except KMSInternalException:
        raise DataDirRefused(f"{path} does not open under the configured root key; "
                             "it was sealed under another root key or is damaged") from None
