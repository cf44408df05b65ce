"""``kms audit export --data-dir DIR --to OUT``: the log's records in CloudTrail's S3 layout.

Rules: log files ``AWSLogs/<account>/CloudTrail/<region>/YYYY/MM/DD/..._<id>.json.gz``
(``{"Records": [...]}``), one per hour of events per run; a digest per such hour in
CloudTrail's digest format, chained to the one before and signed SHA256withRSA with the
region's audit signing key over CloudTrail's signing string (its signature beside it in
``<digest>.sig``, as S3 keeps it in the object's metadata). ``kms-export-state.json``
records the last exported seq and each account's last digest, so a second run writes only
new records. A run is atomic: its files are staged in ``.kms-export-staging`` and a manifest
sealed, then renamed into place in order (log files, then each digest's signature and the
digest), the state file last; a crash before the seal leaves the last completed export (the
stage is discarded), one after it is completed by the next run before anything else. A
cross-account call's records go to each recipient account's ``AWSLogs/<account>/`` with its
own digest chain. Reads the log read-only (the node may be running); writes only
``audit-exported.json`` beside it, which ``kms audit prune`` reads.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import hashlib
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from kms.audit import livelog
from kms.audit.cloudtrail import fact_records
from kms.audit.signing import ALGORITHM, AuditSigningKey
from kms.datadir import DataDirRefused
from kms.domain import events as ev
from kms.files import fsync_dir
from kms.store.log import AUDIT_STREAM, row_hash

STATE_FILE = "kms-export-state.json"
EXPORTED_FILE = "audit-exported.json"  # in the data dir: the last seq an export holds
PUBLIC_KEYS_DIR = "public-keys"
DEFAULT_BUCKET = "kms-audit"
DEFAULT_TRAIL = "kms"
HOUR_MS = 3_600_000


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", type=Path, required=True, help="the node's data dir")
    p.add_argument("--to", type=Path, required=True, dest="out", help="the export directory")
    p.add_argument("--bucket", default=DEFAULT_BUCKET,
                   help="the S3 bucket name the digests name (default %(default)s)")
    p.add_argument("--trail", default=DEFAULT_TRAIL, help="trail name (default %(default)s)")
    p.add_argument("--progress", action="store_true",
                   help="show a progress bar even when stderr is not a terminal")


def run(args: argparse.Namespace) -> int:
    try:
        result = export(args.data_dir, args.out, bucket=args.bucket, trail=args.trail,
                        progress=sys.stderr if args.progress or sys.stderr.isatty() else None)
    except (livelog.LiveLogUnreadable, DataDirRefused, ExportRefused) as exc:
        print(f"kms audit export: error: {exc}", file=sys.stderr)
        return 2
    print(f"exported {result.records} records (seq {result.from_seq + 1}-{result.last_seq}) "
          f"in {result.log_files} log files and {result.digests} digest files to {args.out}")
    return 0


class ExportRefused(Exception):
    """The log or the export directory cannot be exported to; the message says why."""


@dataclass(frozen=True, slots=True)
class ExportResult:
    from_seq: int
    last_seq: int
    records: int
    log_files: int
    digests: int


def _iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _stamp(ms: int, fmt: str) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime(fmt)


def _gz(doc: dict[str, Any]) -> tuple[bytes, bytes]:
    """(uncompressed, gzip) bytes of ``doc``, deterministic (mtime 0)."""
    raw = json.dumps(doc, separators=(",", ":"), sort_keys=False).encode()
    return raw, gzip.compress(raw, mtime=0)


def signing_string(end_time: str, bucket: str, obj: str, digest_raw: bytes,
                   previous_signature: str | None) -> bytes:
    """CloudTrail's: end time, bucket/object, hex SHA-256 of the digest, the previous
    signature ("null" for the first digest)."""
    return "\n".join([end_time, f"{bucket}/{obj}", hashlib.sha256(digest_raw).hexdigest(),
                      previous_signature or "null"]).encode()


def read_state(out: Path) -> dict[str, Any] | None:
    try:
        doc: dict[str, Any] = json.loads((out / STATE_FILE).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ExportRefused(f"{out / STATE_FILE} is damaged: {exc}") from None
    return doc


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class _Progress:
    def __init__(self, stream: TextIO | None, total: int) -> None:
        self.stream, self.total, self.done = stream, total, 0

    def step(self, n: int) -> None:
        self.done += n
        if self.stream is None or self.total == 0:
            return
        width = 30
        filled = width * self.done // self.total
        self.stream.write(f"\rexporting [{'#' * filled}{'.' * (width - filled)}] "
                          f"{self.done}/{self.total} records")
        if self.done >= self.total:
            self.stream.write("\n")
        self.stream.flush()


def export(data_dir: Path, out: Path, *, bucket: str = DEFAULT_BUCKET,
           trail: str = DEFAULT_TRAIL, progress: TextIO | None = None) -> ExportResult:
    region, account = livelog.identity(data_dir)
    root = livelog.root_key(data_dir)
    if root is None:
        raise ExportRefused(f"no root key for {data_dir} (KMS_ROOT_KEY or root.key): the "
                            "digests are signed with the audit key sealed under it")
    key = AuditSigningKey.load(data_dir, root)
    out.mkdir(parents=True, exist_ok=True)
    _complete(out, data_dir)  # a run cut short while committing: finish it first
    state = read_state(out) or {}
    if state and (state.get("region"), state.get("account")) != (region, account):
        raise ExportRefused(f"{out} holds the export of region {state.get('region')}, account "
                            f"{state.get('account')}, not {region}/{account}")
    after = int(state.get("last_seq", 0))
    previous = last_digests(state)
    _write(out / PUBLIC_KEYS_DIR / f"{key.fingerprint}.pem", key.pem)
    db = livelog.open_readonly(data_dir)
    try:
        total = db.execute("SELECT count(*) FROM events WHERE stream = ? AND seq > ?",
                           (AUDIT_STREAM, after)).fetchone()[0]
        bar = _Progress(progress, int(total))
        # (recipient account, hour) -> (seq, at_ms, record): each account's own files
        hours: dict[tuple[str, int], list[tuple[int, int, dict[str, Any]]]] = {}
        last_seq = after
        for seq, stream, version, type_name, origin, oseq, at_ms, body, p, h in livelog.rows(
                db, after):
            if stream != AUDIT_STREAM:
                continue
            body, p, h = bytes(body), bytes(p), bytes(h)
            if row_hash(p, seq, stream, version, type_name, origin, oseq, at_ms, body) != h:
                raise ExportRefused(f"seq {seq} does not hash to its stored hash; run "
                                    f"`kms audit verify --data-dir {data_dir}`")
            fact = ev.decode(str(type_name), body)
            if not isinstance(fact, ev.ApiCallRecorded):
                continue
            for record in fact_records(fact, seq=seq, at_ms=at_ms, region=region,
                                       default_account=account):
                hours.setdefault((record["recipientAccountId"], at_ms // HOUR_MS),
                                 []).append((seq, at_ms, record))
            last_seq = seq
    finally:
        db.close()
    n_files = n_digests = n_records = 0
    stage = _Stage(out)
    for acct, hour in sorted(hours, key=lambda k: (k[1], k[0])):
        entries = hours[(acct, hour)]
        log_entry = _write_log_file(stage, bucket, acct, region, entries)
        previous[acct] = _write_digest(stage, key, bucket, acct, region, trail, [log_entry],
                                       entries, previous.get(acct))
        n_files += 1
        n_digests += 1
        n_records += len(entries)
        bar.step(len(entries))
    if n_records or not state:
        doc = {"region": region, "account": account, "last_seq": last_seq,
               "last_digest": previous.get(account), "last_digests": previous,
               "public_key_fingerprint": key.fingerprint}
        # Beside the log, for ``kms audit prune``: what is exported, and where (not the db).
        mark = {"out": str(out.resolve()), "last_seq": last_seq}
        stage.seal(doc, mark)
        _complete(out, data_dir)
    else:
        stage.discard()
    return ExportResult(after, last_seq, n_records, n_files, n_digests)


def last_digests(state: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The newest digest of each account an export state records (a state written before
    exports had several accounts names only its own account's)."""
    found = state.get("last_digests")
    if isinstance(found, dict):
        return dict(found)
    last = state.get("last_digest")
    return {str(state.get("account")): last} if last else {}


# -- one run's files: staged, then committed in order, the state last ---------------------
STAGING_DIR = ".kms-export-staging"  # in OUT: a run's files before they are committed
MANIFEST = "manifest.json"  # in the staging dir: written once every file is staged
CRASH_ENV = "KMS_AUDIT_EXPORT_CRASH_AFTER"  # test hook: "stage:N" or "commit:N"


def _crash_point(phase: str, done: int) -> None:
    """Exit at once, as a crash would, after ``done`` files of ``phase`` (tests only)."""
    want = os.environ.get(CRASH_ENV, "")
    if want == f"{phase}:{done}":
        os._exit(70)


class _Stage:
    """Files of one run written under ``OUT/.kms-export-staging`` by their final names;
    ``seal`` writes the manifest (their commit order, the state to write after them).
    A staging dir without a manifest is a run cut short before it sealed: it is discarded,
    so the export stays as the last completed run left it."""

    def __init__(self, out: Path) -> None:
        self.root = out / STAGING_DIR
        self.discard()
        self.files: list[str] = []

    def write(self, name: str, data: bytes) -> None:
        _write(self.root / name, data)
        self.files.append(name)
        _crash_point("stage", len(self.files))

    def seal(self, state: dict[str, Any], mark: dict[str, Any]) -> None:
        doc = {"files": self.files, "state": state, "exported": mark}
        _write(self.root / MANIFEST, (json.dumps(doc, indent=2) + "\n").encode())

    def discard(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def pending(out: Path) -> dict[str, Any] | None:
    """The manifest of a run that was cut short while committing (None: none)."""
    try:
        doc: dict[str, Any] = json.loads((out / STAGING_DIR / MANIFEST).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ExportRefused(f"{out / STAGING_DIR / MANIFEST} is damaged: {exc}") from None
    return doc


def _complete(out: Path, data_dir: Path) -> None:
    """Commit a sealed run: each staged file renamed to its place in manifest order (those
    gone are already there), then the state file, then ``audit-exported.json``; then the
    staging dir goes. Safe to run again after a crash at any point of it."""
    doc = pending(out)
    if doc is None:
        shutil.rmtree(out / STAGING_DIR, ignore_errors=True)  # never sealed: discard
        return
    root = out / STAGING_DIR
    for n, name in enumerate(doc["files"], 1):
        staged = root / name
        if staged.exists():
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            os.replace(staged, out / name)
            fsync_dir((out / name).parent)
        _crash_point("commit", n)
    _write(out / STATE_FILE, (json.dumps(doc["state"], indent=2) + "\n").encode())
    _write(data_dir / EXPORTED_FILE, (json.dumps(doc["exported"], indent=2) + "\n").encode())
    shutil.rmtree(root, ignore_errors=True)


def _write_log_file(stage: _Stage, bucket: str, account: str, region: str,
                    entries: list[tuple[int, int, dict[str, Any]]]) -> dict[str, Any]:
    newest = max(at for _, at, _ in entries)
    oldest = min(at for _, at, _ in entries)
    ident = hashlib.sha256(f"{region}:{entries[0][0]}:{entries[-1][0]}".encode()).hexdigest()
    name = (f"{account}_CloudTrail_{region}_{_stamp(newest, '%Y%m%dT%H%MZ')}_"
            f"{ident[:16].upper()}.json.gz")
    obj = f"AWSLogs/{account}/CloudTrail/{region}/{_stamp(newest, '%Y/%m/%d')}/{name}"
    raw, gz = _gz({"Records": [r for _, _, r in entries]})
    stage.write(obj, gz)
    return {"s3Bucket": bucket, "s3Object": obj, "hashValue": hashlib.sha256(raw).hexdigest(),
            "hashAlgorithm": "SHA-256", "newestEventTime": _iso(newest),
            "oldestEventTime": _iso(oldest)}


def _write_digest(stage: _Stage, key: AuditSigningKey, bucket: str, account: str, region: str,
                  trail: str, log_files: list[dict[str, Any]],
                  entries: list[tuple[int, int, dict[str, Any]]],
                  previous: dict[str, Any] | None) -> dict[str, Any]:
    newest = max(at for _, at, _ in entries)
    oldest = min(at for _, at, _ in entries)
    prev_end = int(previous["end_ms"]) if previous else None
    start = prev_end if prev_end is not None else oldest // 1000 * 1000
    end = max(start + 1000, newest // 1000 * 1000 + 1000)  # one digest per second at most
    end_time = _iso(end)
    obj = (f"AWSLogs/{account}/CloudTrail-Digest/{region}/{_stamp(end, '%Y/%m/%d')}/"
           f"{account}_CloudTrail-Digest_{region}_{trail}_{region}_"
           f"{_stamp(end, '%Y%m%dT%H%M%SZ')}.json.gz")
    doc = {
        "awsAccountId": account,
        "digestStartTime": _iso(start),
        "digestEndTime": end_time,
        "digestS3Bucket": bucket,
        "digestS3Object": obj,
        "digestPublicKeyFingerprint": key.fingerprint,
        "digestSignatureAlgorithm": ALGORITHM,
        "newestEventTime": _iso(newest),
        "oldestEventTime": _iso(oldest),
        "previousDigestS3Bucket": previous["bucket"] if previous else None,
        "previousDigestS3Object": previous["object"] if previous else None,
        "previousDigestHashValue": previous["hash"] if previous else None,
        "previousDigestHashAlgorithm": "SHA-256" if previous else None,
        "previousDigestSignature": previous["signature"] if previous else None,
        "logFiles": log_files,
    }
    raw, gz = _gz(doc)
    signature = key.sign(signing_string(end_time, bucket, obj, raw,
                                        previous["signature"] if previous else None)).hex()
    stage.write(obj + ".sig", (signature + "\n").encode())  # a digest is never unsigned
    stage.write(obj, gz)
    return {"bucket": bucket, "object": obj, "hash": hashlib.sha256(raw).hexdigest(),
            "signature": signature, "end_ms": end}
