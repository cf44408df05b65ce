"""``kms audit verify OUT`` and ``kms audit verify --data-dir DIR``: integrity, checked.

Rules: an export holds when every digest's signature verifies (CloudTrail's signing string,
the public key the digest names, from ``OUT/public-keys`` or ``--public-key``), each digest
names the one before it by object, hash and signature, every log file it names is there
with that SHA-256, no file is there that no digest names, and the newest digest is the one
the export state records. The live log holds when ``kms.audit.livelog.check`` finds nothing
and it reaches the last seq its export (``audit-exported.json``) holds.
One line per problem (missing, added, changed, ...), then a summary; exit 0 only when all
holds, 1 when something does not, 2 when it cannot be read at all.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from kms.audit import livelog
from kms.audit.export import (
    EXPORTED_FILE,
    PUBLIC_KEYS_DIR,
    STAGING_DIR,
    STATE_FILE,
    ExportRefused,
    last_digests,
    pending,
    read_state,
    signing_string,
)
from kms.audit.signing import AuditPublicKey
from kms.datadir import DataDirRefused


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", nargs="?", type=Path, help="an export directory (kms audit export)")
    p.add_argument("--data-dir", type=Path, help="check a node's live log instead")
    p.add_argument("--public-key", type=Path,
                   help="PEM of the audit public key to trust (GET /_kms/audit/public-key); "
                        "default: the key in the export or the data dir")


def run(args: argparse.Namespace) -> int:
    if (args.out is None) == (args.data_dir is None):
        print("kms audit verify: error: give an export directory or --data-dir, not both",
              file=sys.stderr)
        return 2
    try:
        pinned = (AuditPublicKey.from_pem(args.public_key.read_bytes())
                  if args.public_key else None)
        if args.data_dir is not None:
            live = livelog.check(args.data_dir, pinned)
            problems = live.problems + exported_tail(args.data_dir, live.last_seq)
            summary = live.summary(args.data_dir)
        else:
            problems, summary = verify_export(args.out, pinned)
    except (OSError, ValueError, livelog.LiveLogUnreadable, DataDirRefused,
            ExportRefused) as exc:
        print(f"kms audit verify: error: {exc}", file=sys.stderr)
        return 2
    for line in problems:
        print(line)
    print(summary)
    return 0 if not problems else 1


def exported_tail(data_dir: Path, last_seq: int) -> list[str]:
    """The live log against what was exported from it: a log that ends before the last seq
    ``audit-exported.json`` (or the export it names) holds has lost exported records."""
    try:
        mark = json.loads((data_dir / EXPORTED_FILE).read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        return [f"changed: {data_dir / EXPORTED_FILE} (not readable: {exc})"]
    found = []  # (seq, what records it): the export's own state first, then the mark
    try:
        state = read_state(Path(str(mark.get("out", ""))))
    except ExportRefused:
        state = None
    if state is not None:
        found.append((int(state.get("last_seq", 0)), str(Path(mark["out"]) / STATE_FILE)))
    found.append((int(mark.get("last_seq", 0)), str(data_dir / EXPORTED_FILE)))
    exported, where = max(found, key=lambda f: f[0])
    if exported > last_seq:
        return [f"missing tail: the log ends at seq {last_seq}, but {where} records an export "
                f"of it through seq {exported}"]
    return []


def _gunzip(path: Path) -> bytes | None:
    try:
        return gzip.decompress(path.read_bytes())
    except (OSError, EOFError, gzip.BadGzipFile):
        return None


def verify_export(out: Path, pinned: AuditPublicKey | None = None) -> tuple[list[str], str]:
    """(problems, summary) for the export in ``out``."""
    if not out.is_dir():
        raise ExportRefused(f"{out} is not a directory")
    state = read_state(out)
    keys = _keys(out, pinned)
    files = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()
             and not str(p.relative_to(out)).startswith(STAGING_DIR + "/")}
    expected = {STATE_FILE} | {f for f in files if f.startswith(PUBLIC_KEYS_DIR + "/")}
    problems: list[str] = []
    if pending(out) is not None:  # files of a cut-short run may be half in place
        problems.append(f"unfinished: {STAGING_DIR} (an export was cut short while "
                        "committing; run kms audit export again to complete it)")
    digests: list[tuple[str, dict[str, Any], bytes]] = []
    for name in sorted(f for f in files if "/CloudTrail-Digest/" in f and f.endswith(".json.gz")):
        raw = _gunzip(out / name)
        doc = None
        if raw is not None:
            try:
                doc = json.loads(raw)
            except ValueError:
                doc = None
        expected.add(name)
        if not isinstance(doc, dict) or raw is None:
            problems.append(f"changed: {name} (not a readable digest file)")
            continue
        digests.append((name, doc, raw))
    digests.sort(key=lambda d: (_account_of(d[0]), str(d[1].get("digestEndTime"))))
    named_logs: dict[str, dict[str, Any]] = {}
    by_object = {name: (doc, raw) for name, doc, raw in digests}
    prev: tuple[str, dict[str, Any], bytes, str] | None = None
    newest: dict[str, str] = {}  # account -> its newest digest (each account its own chain)
    n_records = 0
    for name, doc, raw in digests:
        if prev is not None and _account_of(prev[0]) != _account_of(name):
            prev = None
        newest[_account_of(name)] = name
        sig_name = name + ".sig"
        expected.add(sig_name)
        signature = (out / sig_name).read_text().strip() if sig_name in files else None
        if signature is None:
            problems.append(f"missing: {sig_name} (the signature of {name})")
        else:
            problems += _check_signature(name, doc, raw, signature, keys)
        if doc.get("digestS3Object") != name:
            problems.append(f"changed: {name} (it names itself {doc.get('digestS3Object')})")
        p_obj = doc.get("previousDigestS3Object")
        if p_obj is not None and p_obj not in by_object:
            problems.append(f"missing: {p_obj} (the digest {name} follows)")
        elif prev is not None and p_obj != prev[0]:
            problems.append(f"changed: {name} (it follows {p_obj}, not {prev[0]})")
        elif prev is not None and (doc.get("previousDigestHashValue")
                                   != hashlib.sha256(prev[2]).hexdigest()
                                   or doc.get("previousDigestSignature") != prev[3]):
            problems.append(f"changed: {prev[0]} (the digest after it recorded another hash "
                            "or signature for it)")
        for entry in doc.get("logFiles") or []:
            obj = str(entry.get("s3Object"))
            named_logs[obj] = entry
            expected.add(obj)
            if obj not in files:
                problems.append(f"missing: {obj} (named by {name})")
                continue
            content = _gunzip(out / obj)
            if content is None or hashlib.sha256(content).hexdigest() != entry.get("hashValue"):
                problems.append(f"changed: {obj} (its SHA-256 is not the one {name} records)")
                continue
            try:
                n_records += len(json.loads(content)["Records"])
            except (ValueError, KeyError, TypeError):
                problems.append(f"changed: {obj} (not a CloudTrail log file)")
        prev = (name, doc, raw, signature or "")
    if state is not None and last_digests(state):
        for account, digest in sorted(last_digests(state).items()):
            last = str(digest["object"])
            if last not in by_object:
                problems.append(f"missing: {last} (the newest digest, per {STATE_FILE})")
            elif newest.get(account, last) != last:
                problems.append(f"added: {newest[account]} (newer than the last digest "
                                f"{STATE_FILE} records)")
        for account in sorted(set(newest) - set(last_digests(state))):
            problems.append(f"added: {newest[account]} (of an account {STATE_FILE} does not "
                            "record)")
    elif state is None and digests:
        problems.append(f"missing: {STATE_FILE}")
    for extra in sorted(files - expected):
        problems.append(f"added: {extra} (named by no digest)")
    fingerprints = (", ".join(sorted(keys)) or "none") + (
        " (pinned)" if pinned is not None else " (the export's own copy: pin it with --public-key)")
    state_text = "all valid" if not problems else f"{len(problems)} problem(s)"
    summary = (f"export {out}: {len(digests)} digest files, {len(named_logs)} log files, "
               f"{n_records} records, key {fingerprints}: {state_text}")
    return problems, summary


def _account_of(obj: str) -> str:
    """The account of an export object: ``AWSLogs/<account>/...``."""
    parts = obj.split("/")
    return parts[1] if len(parts) > 2 and parts[0] == "AWSLogs" else ""


def _keys(out: Path, pinned: AuditPublicKey | None) -> dict[str, AuditPublicKey]:
    if pinned is not None:
        return {pinned.fingerprint: pinned}
    keys: dict[str, AuditPublicKey] = {}
    for pem in sorted((out / PUBLIC_KEYS_DIR).glob("*.pem")):
        try:
            key = AuditPublicKey.from_pem(pem.read_bytes())
        except ValueError:
            continue
        keys[key.fingerprint] = key
    return keys


def _check_signature(name: str, doc: dict[str, Any], raw: bytes, signature: str,
                     keys: dict[str, AuditPublicKey]) -> list[str]:
    fingerprint = str(doc.get("digestPublicKeyFingerprint"))
    key = keys.get(fingerprint)
    if key is None:
        return [f"changed: {name} (signed by key {fingerprint}, which is not a trusted key)"]
    try:
        sig = bytes.fromhex(signature)
    except ValueError:
        return [f"changed: {name}.sig (not a hex signature)"]
    message = signing_string(str(doc.get("digestEndTime")), str(doc.get("digestS3Bucket")),
                             name, raw, doc.get("previousDigestSignature"))
    if not key.verifies(message, sig):
        return [f"changed: {name} (its signature does not verify)"]
    return []
