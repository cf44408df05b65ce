"""Export and integrity of the audit stream, through the ``kms audit`` command and boto3.

An export verifies, and a changed byte, a removed file and an added file each fail with a
line naming the file; a truncated live log and a rewritten chain fail ``verify --data-dir``
(and the node refuses to start on them); a second export writes only new records; a prune
keeps both verifications passing and the keys usable; start-up re-hashes only from the last
signed checkpoint (the node's ``log_verified`` line says how many rows it re-hashed).
"""

from __future__ import annotations

import base64
import gzip
import json
import shutil
import sqlite3
import subprocess
import sys
import urllib.request
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from kms.audit.checkpoints import WITNESS_FILE
from kms.store.log import AUDIT_STREAM, row_hash
from tests.conftest import client_for
from tests.reliability.test_log_integrity import attempt_start
from tests.support.server import ServerProcess

LOG_FILE = "events.sqlite3"
ROOT = Path(__file__).resolve().parents[2]
COLUMNS = "seq, stream, version, type, origin_region, origin_seq, at_ms, body, prev_hash, hash"


def audit(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``kms audit ...`` as a user runs it."""
    return subprocess.run([sys.executable, "-m", "regions.cli", "audit", *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120, env=env)


def export_and_verify(data_dir: Path, out: Path) -> Path:
    """``kms audit export`` then ``kms audit verify`` of it, both passing (verify's summary
    printed); returns ``out``."""
    done = audit("export", "--data-dir", data_dir, "--to", out)
    assert done.returncode == 0, done.stderr
    ok = audit("verify", out)
    print(f"\n  {ok.stdout.strip()}")
    assert ok.returncode == 0 and ok.stdout.strip().endswith("all valid"), ok.stdout
    return out


def calls(url: str, n: int = 4) -> list[bytes]:
    """A few keys, ciphertexts and one refused call; returns the ciphertexts."""
    kms: Any = client_for(url)
    blobs = []
    for i in range(n):
        key = kms.create_key(Description=f"audit {i}")["KeyMetadata"]["KeyId"]
        blobs.append(kms.encrypt(KeyId=key, Plaintext=f"secret {i}".encode())["CiphertextBlob"])
    with pytest.raises(kms.exceptions.NotFoundException):
        kms.describe_key(KeyId="alias/does-not-exist")
    return blobs


def history(tmp_path: Path, name: str = "data") -> Path:
    data_dir = tmp_path / name
    node = ServerProcess(data_dir).start()
    try:
        calls(node.url)
    finally:
        node.stop()
    return data_dir


def audit_rows(data_dir: Path) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(data_dir / LOG_FILE)) as db:
        return db.execute(f"SELECT {COLUMNS} FROM events WHERE stream = ? ORDER BY seq",
                          (AUDIT_STREAM,)).fetchall()


def exported_records(out: Path) -> list[dict[str, Any]]:
    records = []
    for path in sorted(out.glob("AWSLogs/*/CloudTrail/*/*/*/*/*.json.gz")):
        records += json.loads(gzip.decompress(path.read_bytes()))["Records"]
    return records


def problems(result: subprocess.CompletedProcess[str]) -> list[str]:
    return result.stdout.strip().splitlines()[:-1]  # the last line is the summary


# -- export and verify ------------------------------------------------------------------------
def test_an_export_verifies_and_each_tampering_is_named(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    node = ServerProcess(data_dir).start()
    try:
        calls(node.url)
        with urllib.request.urlopen(node.url + "/_kms/audit/public-key") as r:
            published = json.load(r)
    finally:
        node.stop()
    out = export_and_verify(data_dir, tmp_path / "export")
    pinned = tmp_path / "published.pem"  # trust the key the node published, not the copy
    pinned.write_text(published["Pem"])
    assert audit("verify", out, "--public-key", pinned).returncode == 0
    stranger = tmp_path / "stranger.pem"  # another region's key: nothing it signed holds here
    stranger.write_bytes((history(tmp_path, "other") / "audit-signing.pub").read_bytes())
    forged = audit("verify", out, "--public-key", stranger)
    assert forged.returncode == 1 and "which is not a trusted key" in forged.stdout
    records = exported_records(out)
    assert len(records) == len(audit_rows(data_dir))
    assert any(r.get("errorCode") == "NotFoundException" for r in records)
    (digest,) = out.glob("AWSLogs/*/CloudTrail-Digest/*/*/*/*/*.json.gz")
    doc = json.loads(gzip.decompress(digest.read_bytes()))
    assert doc["digestPublicKeyFingerprint"] == published["Fingerprint"]
    assert doc["digestSignatureAlgorithm"] == "SHA256withRSA"
    assert doc["previousDigestSignature"] is None and len(doc["logFiles"]) == 1
    (log_file,) = out.glob("AWSLogs/*/CloudTrail/*/*/*/*/*.json.gz")
    log_name = str(log_file.relative_to(out))

    def tampered(name: str) -> Path:
        copy = tmp_path / name
        shutil.copytree(out, copy)
        return copy

    changed = tampered("changed")  # one byte of the records, recompressed: a valid gzip
    raw = bytearray(gzip.decompress((changed / log_name).read_bytes()))
    raw[raw.index(b"secret") if b"secret" in raw else len(raw) // 2] ^= 0x01
    (changed / log_name).write_bytes(gzip.compress(bytes(raw)))
    removed = tampered("removed")
    (removed / log_name).unlink()
    added = tampered("added")
    extra = log_file.parent.relative_to(out) / "111122223333_CloudTrail_us-east-1_extra.json.gz"
    (added / extra).write_bytes(gzip.compress(b'{"Records": []}'))
    digest_name = str(digest.relative_to(out))
    resigned = tampered("digest-edited")  # the digest made to name another hash
    edited = json.loads(gzip.decompress((resigned / digest_name).read_bytes()))
    edited["logFiles"][0]["hashValue"] = "0" * 64
    (resigned / digest_name).write_bytes(gzip.compress(json.dumps(edited).encode()))
    expected = {
        changed: [f"changed: {log_name} (its SHA-256 is not the one {digest_name} records)"],
        removed: [f"missing: {log_name} (named by {digest_name})"],
        added: [f"added: {extra} (named by no digest)"],
        resigned: [f"changed: {digest_name} (its signature does not verify)",
                   f"changed: {log_name} (its SHA-256 is not the one {digest_name} records)"],
    }
    for copy, lines in expected.items():
        result = audit("verify", copy)
        print(f"\n  {copy.name}: exit {result.returncode}: {problems(result)}", end="")
        assert result.returncode == 1, result.stdout
        assert problems(result) == lines
        assert result.stdout.strip().endswith(f"{len(lines)} problem(s)")
    print()


def test_a_second_export_writes_only_the_new_records(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    out = tmp_path / "export"
    node = ServerProcess(data_dir).start()
    try:
        calls(node.url, 2)
        first = audit("export", "--data-dir", data_dir, "--to", out)  # the node is running
        assert first.returncode == 0, first.stderr
        n_first = len(exported_records(out))
        node.post("/_kms/clock", {"advance_seconds": 2 * 3600})  # the next hour's file
        calls(node.url, 3)
    finally:
        node.stop()
    second = audit("export", "--data-dir", data_dir, "--to", out)
    again = audit("export", "--data-dir", data_dir, "--to", out)
    assert second.returncode == again.returncode == 0
    assert again.stdout.startswith("exported 0 records")
    records = exported_records(out)
    ids = [r["eventID"] for r in records]
    print(f"\n  first export {n_first} records, then {len(records) - n_first}; "
          f"duplicates {len(ids) - len(set(ids))}")
    assert len(ids) == len(set(ids)) == len(audit_rows(data_dir)) > n_first
    digests = sorted(out.glob("AWSLogs/*/CloudTrail-Digest/*/*/*/*/*.json.gz"))
    assert len(digests) == 2
    newer = json.loads(gzip.decompress(digests[1].read_bytes()))
    assert newer["previousDigestS3Object"] == str(digests[0].relative_to(out))
    verified = audit("verify", out)
    assert verified.returncode == 0, verified.stdout


# -- the live log -----------------------------------------------------------------------------
def test_the_live_log_verifies_running_or_stopped(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    node = ServerProcess(data_dir).start()
    try:
        calls(node.url, 2)
        running = audit("verify", "--data-dir", data_dir)
    finally:
        node.stop()
    stopped = audit("verify", "--data-dir", data_dir)
    assert running.returncode == 0 and running.stdout.strip().endswith(": OK"), running.stdout
    assert stopped.returncode == 0 and "0 rows after it" in stopped.stdout, stopped.stdout


def test_a_truncated_live_log_fails_verify_and_start(tmp_path: Path) -> None:
    data_dir = history(tmp_path)
    witness = json.loads((data_dir / WITNESS_FILE).read_text())
    both = tmp_path / "both"  # the rows and the checkpoints after them cut off
    shutil.copytree(data_dir, both)
    for cut, checkpoints_too in ((data_dir, False), (both, True)):
        with closing(sqlite3.connect(cut / LOG_FILE)) as db, db:
            kept = db.execute("SELECT max(seq) FROM events").fetchone()[0] - 3
            db.execute("DELETE FROM events WHERE seq > ?", (kept,))
            if checkpoints_too:
                db.execute("DELETE FROM checkpoints WHERE seq > ?", (kept,))
        result = audit("verify", "--data-dir", cut)
        print(f"\n  {result.stdout.strip()}")
        assert result.returncode == 1
        assert problems(result) == [
            f"missing tail: the log ends at seq {kept}, but log-checkpoint.json records the "
            f"signed checkpoint at seq {witness['seq']} (head {witness['head'][:16]}…), which "
            "the log does not hold" if checkpoints_too else
            f"missing tail: the log ends at seq {kept}, but the signed checkpoint at seq "
            f"{witness['seq']} covers rows up to there"]
        attempt = attempt_start(cut)
        assert attempt.detected and not attempt.served
        assert "missing tail" in attempt.stderr


def rewrite_from(db: sqlite3.Connection, seq: int) -> None:
    """Change the body of the row at ``seq`` and re-hash the chain from there on, so every
    link agrees: only a signature can tell."""
    rows = db.execute(f"SELECT {COLUMNS} FROM events WHERE seq >= ? ORDER BY seq",
                      (seq,)).fetchall()
    prev = rows[0][8]
    for i, (s, stream, version, type_name, region, oseq, at_ms, body, _, _) in enumerate(rows):
        if i == 0:
            body = body.replace(b"Encrypt", b"Decrypt")
        h = row_hash(prev, s, stream, version, type_name, region, oseq, at_ms, body)
        db.execute("UPDATE events SET body = ?, prev_hash = ?, hash = ? WHERE seq = ?",
                   (body, prev, h, s))
        prev = h


def test_a_rewritten_chain_fails_verify_and_start(tmp_path: Path) -> None:
    data_dir = history(tmp_path)
    (target,) = [r[0] for r in audit_rows(data_dir)
                 if b"Encrypt" in r[7]][:1]
    with closing(sqlite3.connect(data_dir / LOG_FILE)) as db, db:
        rewrite_from(db, target)
        signed = [q for (q,) in db.execute("SELECT seq FROM checkpoints WHERE seq >= ?",
                                           (target,))]
    result = audit("verify", "--data-dir", data_dir)
    print(f"\n  {result.stdout.strip()}")
    assert result.returncode == 1 and signed
    assert problems(result) == [
        f"seq {q}: rewritten chain: the row's hash is not the head the checkpoint signed there "
        f"(the rows up to seq {q} are not the ones that were signed)" for q in signed]
    attempt = attempt_start(data_dir)
    assert attempt.detected and not attempt.served


# -- prune ------------------------------------------------------------------------------------
def test_prune_keeps_verify_passing_and_state_intact(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    out = tmp_path / "export"
    node = ServerProcess(data_dir).start()
    try:
        old_blobs = calls(node.url)
        node.post("/_kms/clock", {"advance_seconds": 100 * 86400})
        calls(node.url, 1)
        refused = audit("prune", "--data-dir", data_dir, "--older-than", "90d")
    finally:
        node.stop()
    assert refused.returncode == 2 and "stop the node before pruning" in refused.stderr
    before = audit_rows(data_dir)
    with closing(sqlite3.connect(data_dir / LOG_FILE)) as db:
        state_before = db.execute(f"SELECT {COLUMNS} FROM events WHERE stream != ? ORDER BY seq",
                                  (AUDIT_STREAM,)).fetchall()
    assert audit("export", "--data-dir", data_dir, "--to", out).returncode == 0
    pruned = audit("prune", "--data-dir", data_dir, "--older-than", "90d")
    print(f"\n  {pruned.stdout.strip()}")
    assert pruned.returncode == 0, pruned.stderr
    after = audit_rows(data_dir)
    with closing(sqlite3.connect(data_dir / LOG_FILE)) as db:
        state_after = db.execute(f"SELECT {COLUMNS} FROM events WHERE stream != ? ORDER BY seq",
                                 (AUDIT_STREAM,)).fetchall()
    assert state_after == state_before  # key state events never go
    assert 0 < len(after) < len(before)
    cutoff = max(r[6] for r in before) - 90 * 86400 * 1000
    assert all(r[6] >= cutoff for r in after)  # only the old ones went
    live = audit("verify", "--data-dir", data_dir)
    print(f"  {live.stdout.strip()}")
    assert live.returncode == 0, live.stdout
    assert audit("verify", out).returncode == 0
    node = ServerProcess(data_dir).start()  # start-up accepts the cut
    try:
        kms: Any = client_for(node.url)
        for i, blob in enumerate(old_blobs):
            assert kms.decrypt(CiphertextBlob=blob)["Plaintext"] == f"secret {i}".encode()
        calls(node.url, 1)
    finally:
        node.stop()
    assert audit("verify", "--data-dir", data_dir).returncode == 0
    again = audit("export", "--data-dir", data_dir, "--to", out)
    assert again.returncode == 0 and audit("verify", out).returncode == 0


# -- start-up from the last checkpoint ----------------------------------------------------------
def verified_at_start(data_dir: Path, log_path: Path, env: dict[str, str]) -> dict[str, Any]:
    node = ServerProcess(data_dir, log_path=log_path, env=env).start()
    node.stop()
    lines = [line for line in node.log_lines() if line["event"] == "log_verified"]
    return lines[-1]


def test_start_up_re_hashes_only_from_the_last_checkpoint(tmp_path: Path) -> None:
    env = {"KMS_START_RECHECK_ROWS": "0"}  # no window before the checkpoint
    data_dir = tmp_path / "data"
    node = ServerProcess(data_dir, env=env).start()
    try:
        calls(node.url)
    finally:
        node.stop()  # a clean shutdown signs the head
    first = verified_at_start(data_dir, tmp_path / "1.log", env)
    node = ServerProcess(data_dir, env=env).start()
    calls(node.url, 6)
    node.kill()  # no shutdown checkpoint: these rows follow the last one
    second = verified_at_start(data_dir, tmp_path / "2.log", env)
    print(f"\n  rows {first['rows']}: re-hashed at start {first['rows_rehashed']}; after more "
          f"calls and a kill, rows {second['rows']}: re-hashed {second['rows_rehashed']} "
          f"(from the checkpoint at seq {second['checkpoint_seq']})")
    assert first["rows_rehashed"] == 1  # the row the checkpoint signs
    # the rest is in the snapshot stored at that checkpoint (kms.store.snapshot): not read
    assert (first["rows_read"], first["rows_decoded"]) == (2, 0)  # the row before links it
    unsigned = second["rows"] - second["checkpoint_seq"]
    assert second["rows_rehashed"] == 1 + unsigned > 1
    # a changed row after the last checkpoint is still found at start...
    tail = tmp_path / "tail"
    shutil.copytree(data_dir, tail)
    with closing(sqlite3.connect(tail / LOG_FILE)) as db, db:
        db.execute("UPDATE events SET at_ms = at_ms + 1 WHERE seq = (SELECT max(seq) FROM events)")
    attempt = attempt_start(tail)
    assert attempt.detected and not attempt.served
    # ...one well before it, outside the re-check window, only by `kms audit verify`
    old = tmp_path / "old"
    shutil.copytree(data_dir, old)
    with closing(sqlite3.connect(old / LOG_FILE)) as db, db:
        db.execute("UPDATE events SET at_ms = at_ms + 1 WHERE seq = 2")
    result = audit("verify", "--data-dir", old)
    assert problems(result) == ["seq 2: broken link: the stored row does not hash to its "
                                "stored hash (the row was changed)"]


def test_the_public_key_is_open_and_matches_the_data_dir(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    node = ServerProcess(data_dir, dev=False).start()
    try:
        with urllib.request.urlopen(node.url + "/_kms/audit/public-key") as r:
            doc = json.load(r)
    finally:
        node.stop()
    assert doc["SignatureAlgorithm"] == "SHA256withRSA" and len(doc["Fingerprint"]) == 32
    assert doc["Pem"].encode() == (data_dir / "audit-signing.pub").read_bytes()
    assert base64.b64decode(doc["PublicKey"])[:1] == b"\x30"  # DER SubjectPublicKeyInfo
    sealed = (data_dir / "audit-signing.key").read_bytes()
    assert b"PRIVATE" not in sealed and (data_dir / "audit-signing.key").stat().st_mode & 0o077 == 0


def test_an_export_cut_short_leaves_the_last_export_and_the_next_run_completes_it(
        tmp_path: Path) -> None:
    import os

    from kms.audit.export import CRASH_ENV, STAGING_DIR

    data_dir = tmp_path / "data"
    out = tmp_path / "export"
    node = ServerProcess(data_dir).start()

    def crashing(point: str) -> subprocess.CompletedProcess[str]:
        return audit("export", "--data-dir", data_dir, "--to", out,
                     env={**os.environ, CRASH_ENV: point})

    def verified() -> subprocess.CompletedProcess[str]:
        return audit("verify", out)

    try:
        calls(node.url, 1)
        assert audit("export", "--data-dir", data_dir, "--to", out).returncode == 0
        n_old = len(exported_records(out))
        for _ in range(2):  # two more hours of records: several files to write
            node.post("/_kms/clock", {"advance_seconds": 2 * 3600})
            calls(node.url, 2)
        cut = crashing("stage:2")  # killed while writing its files
        assert cut.returncode == 70, cut.stderr
        ok = verified()  # the export is the last completed one, nothing added
        assert ok.returncode == 0 and ok.stdout.strip().endswith("all valid"), ok.stdout
        assert len(exported_records(out)) == n_old
        calls(node.url, 1)  # new records in the same hour: other names for that hour's file
        cut = crashing("commit:3")  # killed while renaming its files into place
        assert cut.returncode == 70, cut.stderr
        half = verified()
        assert half.returncode == 1
        assert problems(half)[0].startswith(f"unfinished: {STAGING_DIR}")
        calls(node.url, 1)  # and more records before the next run
    finally:
        node.stop()
    again = audit("export", "--data-dir", data_dir, "--to", out)
    assert again.returncode == 0, again.stderr
    ok = verified()
    print(f"\n  after two cut-short runs and a complete one: {ok.stdout.strip()}")
    assert ok.returncode == 0 and ok.stdout.strip().endswith("all valid"), ok.stdout
    ids = [r["eventID"] for r in exported_records(out)]
    assert len(ids) == len(set(ids)) == len(audit_rows(data_dir))
    assert not (out / STAGING_DIR).exists()
    assert audit("export", "--data-dir", data_dir, "--to", out).stdout.startswith(
        "exported 0 records")


def test_a_live_log_cut_back_behind_its_export_fails_verify(tmp_path: Path) -> None:
    data_dir = history(tmp_path)
    out = tmp_path / "export"
    assert audit("export", "--data-dir", data_dir, "--to", out).returncode == 0
    with closing(sqlite3.connect(data_dir / LOG_FILE)) as db, db:  # the tail, its checkpoints
        last = db.execute("SELECT max(seq) FROM events").fetchone()[0]
        kept = last - 3
        db.execute("DELETE FROM events WHERE seq > ?", (kept,))
        db.execute("DELETE FROM checkpoints WHERE seq > ?", (kept,))
    (data_dir / WITNESS_FILE).unlink()  # and the witness: only the export knows now
    result = audit("verify", "--data-dir", data_dir)
    print(f"\n  {result.stdout.strip()}")
    assert result.returncode == 1
    assert problems(result) == [
        f"missing tail: the log ends at seq {kept}, but {out / 'kms-export-state.json'} records "
        f"an export of it through seq {last}"]


def test_a_cross_account_call_is_exported_to_both_accounts(tmp_path: Path) -> None:
    from tests.support.audit_stream import ALICE, CROSS, OLGA, OTHER

    config = tmp_path / "kms.toml"
    config.write_text(CROSS)
    data_dir = tmp_path / "data"
    node = ServerProcess(data_dir, dev=False, extra=["--config", str(config)]).start()
    try:
        alice: Any = client_for(node.url, access_key=ALICE[0], secret=ALICE[1])
        owner = "111122223333"
        policy = json.dumps({"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{owner}:root"},
             "Action": "kms:*", "Resource": "*"},
            {"Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{OTHER}:root"},
             "Action": "kms:Encrypt", "Resource": "*"}]})
        arn = alice.create_key(Policy=policy)["KeyMetadata"]["Arn"]
        olga: Any = client_for(node.url, access_key=OLGA[0], secret=OLGA[1])
        request_id = olga.encrypt(KeyId=arn, Plaintext=b"x")["ResponseMetadata"]["RequestId"]
    finally:
        node.stop()
    out = export_and_verify(data_dir, tmp_path / "export")
    for account in (owner, OTHER):
        assert list(out.glob(f"AWSLogs/{account}/CloudTrail-Digest/*/*/*/*/*.json.gz"))
    theirs = [json.loads(gzip.decompress(p.read_bytes()))["Records"]
              for p in out.glob(f"AWSLogs/{OTHER}/CloudTrail/*/*/*/*/*.json.gz")]
    assert [(r["requestID"], r["recipientAccountId"]) for r in sum(theirs, [])] == \
        [(request_id, OTHER)]  # the other account gets only its own call's record
    both = [r for r in exported_records(out) if r["requestID"] == request_id]
    assert sorted(r["recipientAccountId"] for r in both) == sorted([owner, OTHER])
    assert len({r["sharedEventID"] for r in both}) == 1
    assert len(exported_records(out)) == len(audit_rows(data_dir)) + 1
