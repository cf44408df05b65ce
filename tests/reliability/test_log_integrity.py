"""A torn or corrupted log is detected, never served.

Rules: a flipped byte (or any other edit) in a stored row makes the node refuse to
start, and it never answers health "ok"; a WAL cut mid-frame after a SIGKILL is
SQLite's to repair: the node starts and serves an exact prefix of the acknowledged
history, ending on a transaction boundary (nothing half-applied); a shredded KEK leaves
no copy in any file, even across a crash, and its checkpoint never holds up a commit.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import sqlite3
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from kms.domain import events as ev
from kms.domain.errors import KMSInternalException
from kms.store.log import AUDIT_STREAM, GENESIS, Append, VaultChange, row_hash
from kms.store.sqlite import SqliteLog
from tests.support.server import ServerProcess, free_port

pytestmark = pytest.mark.slow

LOG_FILE = "events.sqlite3"
KEYS = 16
FIGURES: dict[str, str] = {}  # figure halves the tests of this module share
WAL_HEADER, FRAME_HEADER = 32, 24
AUTH = ("AWS4-HMAC-SHA256 Credential=AKIDINTEGRITY/20240101/us-east-1/kms/aws4_request, "
        "SignedHeaders=host;x-amz-date, Signature=" + "0" * 64)
COLUMNS = "seq, stream, version, type, origin_region, origin_seq, at_ms, body, prev_hash, hash"


def call(url: str, operation: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(
        url + "/", data=json.dumps(body).encode(), method="POST",
        headers={"X-Amz-Target": f"TrentService.{operation}",
                 "Content-Type": "application/x-amz-json-1.1", "Authorization": AUTH})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            text, status = r.read(), r.status
    except urllib.error.HTTPError as err:
        text, status = err.read(), err.code
    return status, json.loads(text) if text else {}


def ok(url: str, operation: str, body: dict[str, Any]) -> dict[str, Any]:
    status, doc = call(url, operation, body)
    assert status == 200, (operation, status, doc)
    return doc


def read_rows(db_path: Path) -> list[tuple[Any, ...]]:
    # closing(): sqlite3's own context manager only commits, and a connection left to the
    # garbage collector removes its -wal/-shm files whenever it is collected (mid-copy).
    with closing(sqlite3.connect(db_path)) as db:
        return db.execute(f"SELECT {COLUMNS} FROM events ORDER BY seq").fetchall()


def chain_ok(rows: list[tuple[Any, ...]]) -> bool:
    prev = GENESIS
    for n, (seq, stream, version, type_name, region, oseq, at_ms, body, p, h) in enumerate(
            rows, start=1):
        if seq != n or p != prev or row_hash(prev, seq, stream, version, type_name, region,
                                             oseq, at_ms, body) != h:
            return False
        prev = h
    return True


# -- an acknowledged history with a model of the state after each prefix --------------------
@dataclass(frozen=True)
class Op:
    """One acknowledged call: exactly one log transaction, ending with its audit fact."""

    kind: str  # create | describe | tag | encrypt
    key_id: str
    value: str = ""
    ciphertext: bytes = b""


def write_history(url: str) -> list[Op]:
    """Sequential calls, so the k-th transaction in the log is the k-th op here."""
    ops: list[Op] = []
    for i in range(KEYS):
        meta = ok(url, "CreateKey", {"Description": f"key {i}",
                                     "Tags": [{"TagKey": "n", "TagValue": str(i)}]})
        key_id = meta["KeyMetadata"]["KeyId"]
        ops.append(Op("create", key_id, f"key {i}"))
        ok(url, "UpdateKeyDescription", {"KeyId": key_id, "Description": f"key {i} v2"})
        ops.append(Op("describe", key_id, f"key {i} v2"))
        ok(url, "TagResource", {"KeyId": key_id, "Tags": [{"TagKey": "stage", "TagValue": "2"}]})
        ops.append(Op("tag", key_id, "stage=2"))
        plaintext = f"secret {i}".encode()
        blob = ok(url, "Encrypt", {"KeyId": key_id,
                                   "Plaintext": base64.b64encode(plaintext).decode()})
        ops.append(Op("encrypt", key_id, plaintext.decode(),
                      base64.b64decode(blob["CiphertextBlob"])))
    return ops


def model(ops: list[Op]) -> dict[str, tuple[str, frozenset[str]]]:
    """Key id -> (description, tags) after applying ``ops`` in order."""
    state: dict[str, tuple[str, frozenset[str]]] = {}
    for op in ops:
        if op.kind == "create":
            state[op.key_id] = (op.value, frozenset({f"n={op.value.split()[1]}"}))
        elif op.kind == "describe":
            state[op.key_id] = (op.value, state[op.key_id][1])
        elif op.kind == "tag":
            state[op.key_id] = (state[op.key_id][0], state[op.key_id][1] | {op.value})
    return state


def observed(url: str) -> dict[str, tuple[str, frozenset[str]]]:
    keys = ok(url, "ListKeys", {"Limit": 1000})
    assert not keys.get("Truncated")
    state: dict[str, tuple[str, frozenset[str]]] = {}
    for k in keys["Keys"]:
        meta = ok(url, "DescribeKey", {"KeyId": k["KeyId"]})["KeyMetadata"]
        tags = ok(url, "ListResourceTags", {"KeyId": k["KeyId"]})["Tags"]
        assert meta["KeyState"] == "Enabled"
        state[k["KeyId"]] = (meta["Description"],
                             frozenset(f"{t['TagKey']}={t['TagValue']}" for t in tags))
    return state


# -- starting a node that may refuse to start --------------------------------------------------
@dataclass
class Attempt:
    served: bool  # health ever answered "ok"
    detected: bool  # the node reported LogCorrupted
    returncode: int | None  # None: still running when we stopped watching (then killed)
    stderr: str


def health_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/_kms/health", timeout=1) as r:
            return bool(json.load(r).get("status") == "ok")
    except OSError:
        return False


def attempt_start(data_dir: Path, *, exit_window: float = 0.5,
                  timeout: float = 20.0) -> Attempt:
    """Start a dev node and watch it until it serves or reports corruption; after a report,
    keep watching ``exit_window`` seconds (health must stay down; does it exit?)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    err_path = data_dir.with_name(data_dir.name + ".stderr")
    with open(err_path, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "kms.cli", "serve", "--host", "127.0.0.1", "--port",
             str(port), "--data-dir", str(data_dir), "--log-format", "json", "--dev"],
            stdout=subprocess.DEVNULL, stderr=err)
    served = detected = False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        served = health_ok(url)
        detected = "LogCorrupted" in err_path.read_text()
        if served or detected:
            break
        time.sleep(0.05)  # polling for health or a report
    detected = detected or "LogCorrupted" in err_path.read_text()
    grace = time.monotonic() + exit_window
    while detected and not served and proc.poll() is None and time.monotonic() < grace:
        served = health_ok(url)
        time.sleep(0.05)  # polling: it must not start serving after the report
    returncode = proc.poll()
    if returncode is None:
        proc.kill()
    proc.wait(timeout=15)
    return Attempt(served, detected, returncode, err_path.read_text())


# -- (a) corruption ---------------------------------------------------------------------------
def corrupt_body(seq: int) -> Any:
    def edit(db: sqlite3.Connection) -> None:
        (body,) = db.execute("SELECT body FROM events WHERE seq = ?", (seq,)).fetchone()
        mid = len(body) // 2
        db.execute("UPDATE events SET body = ? WHERE seq = ?",
                   (body[:mid] + bytes([body[mid] ^ 0x20]) + body[mid + 1:], seq))
    return edit


def corrupt_sql(sql: str, *args: Any) -> Any:
    def edit(db: sqlite3.Connection) -> None:
        assert db.execute(sql, args).rowcount == 1
    return edit


def test_a_corrupted_record_is_detected_and_never_served(tmp_path: Path) -> None:
    pristine = tmp_path / "pristine"
    node = ServerProcess(pristine).start()
    try:
        write_history(node.url)
    finally:
        node.stop()
    rows = read_rows(pristine / LOG_FILE)
    last = len(rows)
    created = [r[0] for r in rows if r[3] == "KeyCreated"]
    audits = [r[0] for r in rows if r[1] == AUDIT_STREAM]
    middle_key, middle_audit = created[len(created) // 2], audits[len(audits) // 2]
    cases = {
        "body of the first row": corrupt_body(1),
        "body of a KeyCreated in the middle": corrupt_body(middle_key),
        "body of an audit fact in the middle": corrupt_body(middle_audit),
        "body of the last row": corrupt_body(last),
        "stored hash of a middle row": corrupt_sql(
            "UPDATE events SET hash = zeroblob(32) WHERE seq = ?", middle_key),
        "timestamp of a middle row": corrupt_sql(
            "UPDATE events SET at_ms = at_ms + 1 WHERE seq = ?", middle_audit),
        "a deleted middle row": corrupt_sql("DELETE FROM events WHERE seq = ?", middle_key + 1),
    }
    detected = served = exited = 0
    for i, (name, edit) in enumerate(cases.items()):
        data_dir = tmp_path / f"corrupt-{i}"
        shutil.copytree(pristine, data_dir)
        with sqlite3.connect(data_dir / LOG_FILE) as db:
            edit(db)
        db.close()
        attempt = attempt_start(data_dir)
        detected += attempt.detected and not attempt.served
        served += attempt.served
        exited += attempt.returncode not in (0, None)
        print(f"\n  {name}: reported LogCorrupted {attempt.detected}, served {attempt.served}, "
              f"exit {attempt.returncode}", end="")
        assert not attempt.served, name
        assert attempt.detected, (name, attempt.stderr[-2000:])
    assert attempt_start(pristine).served  # the untouched copy still starts
    print(f"\n  nodes that exited by themselves {exited}/{len(cases)}")
    corrupt = f"corruptions detected {detected}/{len(cases)}; served from a corrupt record {served}"
    FIGURES["corruptions"] = corrupt  # the module's figure line joins it to the torn tails'
    print(corrupt)
    assert detected == len(cases) and served == 0


def test_a_node_that_finds_corruption_exits_nonzero(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    node = ServerProcess(data_dir).start()
    try:
        ok(node.url, "CreateKey", {"Description": "one"})
    finally:
        node.stop()
    with sqlite3.connect(data_dir / LOG_FILE) as db:
        corrupt_body(1)(db)
    db.close()
    attempt = attempt_start(data_dir, exit_window=5.0)
    assert attempt.detected and not attempt.served
    assert attempt.returncode not in (0, None), "the node neither served nor exited"


# -- (b) torn WAL tail --------------------------------------------------------------------------
def wal_offsets(wal: Path) -> dict[str, int]:
    """Deterministic cut points: in the WAL header, in a frame header, mid-page at 1/3 and
    2/3 of the frames, and one byte short of the end."""
    data = wal.read_bytes()
    (page_size,) = struct.unpack(">I", data[8:12])
    frame = FRAME_HEADER + page_size
    frames = (len(data) - WAL_HEADER) // frame
    assert frames > 6, "the history should fill a few WAL frames"

    def mid_page(k: int) -> int:
        return WAL_HEADER + k * frame + FRAME_HEADER + page_size // 2

    return {"in the WAL header": 16,
            "in the first frame header": WAL_HEADER + FRAME_HEADER // 2,
            "mid-page, 1/3 of the frames": mid_page(frames // 3),
            "mid-page, 2/3 of the frames": mid_page(2 * frames // 3),
            "one byte short of the end": len(data) - 1}


def test_a_torn_wal_tail_recovers_to_a_prefix_of_the_acknowledged_history(
        tmp_path: Path) -> None:
    live = tmp_path / "live"
    node = ServerProcess(live).start()
    ops = write_history(node.url)
    node.kill()  # no checkpoint: the history is in the WAL
    wal = live / (LOG_FILE + "-wal")
    assert wal.exists() and wal.stat().st_size > WAL_HEADER

    reference = tmp_path / "reference"  # read once; opening it with sqlite3 checkpoints it
    shutil.copytree(live, reference)
    pristine = read_rows(reference / LOG_FILE)
    assert sum(r[1] == AUDIT_STREAM for r in pristine) == len(ops)  # one transaction per op

    cases = {"untouched (control)": wal.stat().st_size, **wal_offsets(wal)}
    recovered: dict[str, int] = {}
    whole = 0
    for i, (name, offset) in enumerate(cases.items()):
        data_dir = tmp_path / f"torn-{i}"
        shutil.copytree(live, data_dir)
        with open(data_dir / (LOG_FILE + "-wal"), "r+b") as f:
            f.truncate(offset)
        node = ServerProcess(data_dir).start()  # raises if the node does not come up
        try:
            n_rows = int(node.health()["log_seq"])
            assert n_rows <= len(pristine), name
            j = sum(r[1] == AUDIT_STREAM for r in pristine[:n_rows])  # ops fully recovered
            assert observed(node.url) == model(ops[:j]), name
            for op in ops[:j]:  # every present key is whole: its material decrypts
                if op.kind == "encrypt":
                    doc = ok(node.url, "Decrypt",
                             {"CiphertextBlob": base64.b64encode(op.ciphertext).decode()})
                    assert base64.b64decode(doc["Plaintext"]).decode() == op.value
            ok(node.url, "CreateKey", {"Description": "after recovery"})  # and it takes writes
        finally:
            node.stop()
        rows = read_rows(data_dir / LOG_FILE)
        assert rows[:n_rows] == pristine[:n_rows], f"{name}: not a prefix of the history"
        assert n_rows == 0 or rows[n_rows - 1][1] == AUDIT_STREAM, \
            f"{name}: recovery ended inside a transaction"
        assert chain_ok(rows), name
        recovered[name] = j
        whole += name != "untouched (control)"
        print(f"\n  {name} (byte {offset}): {j}/{len(ops)} acknowledged calls kept", end="")

    kept = list(recovered.values())
    assert kept[0] == len(ops), "an untouched WAL must give back the whole history"
    assert kept[1:] == sorted(kept[1:]), "a later cut must never keep less"
    assert kept[-1] < len(ops) and kept[1] == 0, "the cuts should actually tear something"
    torn = f"torn tails recovered {whole}/{len(cases) - 1}"
    # RELIABILITY.md's one line for this promise (the corruption half from the test above)
    print("\n" + "; ".join([torn, *([FIGURES["corruptions"]] if "corruptions" in FIGURES
                                     else [])]))


# -- (c) shredding leaves no copy in the files ------------------------------------------------
def test_a_shredded_kek_is_in_neither_the_main_file_nor_the_wal(tmp_path: Path) -> None:
    """After the deletion date the key's wrapped KEK is dropped with secure_delete on, and
    the WAL is checkpointed and truncated, so no byte of it survives in any of the files."""
    data_dir = tmp_path / "data"
    node = ServerProcess(data_dir).start()
    try:
        doomed = ok(node.url, "CreateKey", {})["KeyMetadata"]["KeyId"]
        survivor = ok(node.url, "CreateKey", {})["KeyMetadata"]["KeyId"]
        uri = f"file:{data_dir / LOG_FILE}?mode=ro"
        with closing(sqlite3.connect(uri, uri=True)) as db:
            wrapped = {k: bytes(w) for k, w in db.execute("SELECT key_id, wrapped FROM vault")}
        assert len(wrapped[doomed]) >= 32
        ok(node.url, "ScheduleKeyDeletion", {"KeyId": doomed, "PendingWindowInDays": 7})
        node.post("/_kms/clock", {"advance_seconds": 7 * 86_400 + 1})
        status, doc = call(node.url, "DescribeKey", {"KeyId": doomed})
        assert (status, doc["__type"]) == (400, "NotFoundException")

        files = {p.name: p.read_bytes() for p in data_dir.glob(LOG_FILE + "*")}
        assert LOG_FILE in files
        for name, content in files.items():
            assert wrapped[doomed] not in content, f"the shredded KEK is still in {name}"
        # the survivor's KEK is still stored (so the search above would have found one)
        assert any(wrapped[survivor] in content for content in files.values())
    finally:
        node.stop()


def file_bytes(data_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in data_dir.glob(LOG_FILE + "*")}


def snapshot_reader(db_path: Path) -> sqlite3.Connection:
    """Another process's reader, holding a read snapshot of the log until it COMMITs."""
    reader = sqlite3.connect(db_path, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM events").fetchone()
    return reader


def test_a_kek_shredded_just_before_a_crash_is_gone_once_the_node_restarts(
        tmp_path: Path) -> None:
    """A reader holding the WAL keeps the shred's checkpoint from finishing, and the node
    dies before a later commit retries it: the next start truncates the WAL."""
    data_dir = tmp_path / "data"
    node = ServerProcess(data_dir).start()
    try:
        doomed = ok(node.url, "CreateKey", {})["KeyMetadata"]["KeyId"]
        survivor = ok(node.url, "CreateKey", {})["KeyMetadata"]["KeyId"]
        uri = f"file:{data_dir / LOG_FILE}?mode=ro"
        with closing(sqlite3.connect(uri, uri=True)) as db:
            wrapped = {k: bytes(w) for k, w in db.execute("SELECT key_id, wrapped FROM vault")}
        ok(node.url, "ScheduleKeyDeletion", {"KeyId": doomed, "PendingWindowInDays": 7})
        with closing(snapshot_reader(data_dir / LOG_FILE)) as reader:
            node.post("/_kms/clock", {"advance_seconds": 7 * 86_400 + 1})  # the shred
            status, doc = call(node.url, "DescribeKey", {"KeyId": doomed})
            assert (status, doc["__type"]) == (400, "NotFoundException")
            node.kill()  # before any later commit
            assert any(wrapped[doomed] in c for c in file_bytes(data_dir).values()), \
                "the reader should have kept the shredded KEK in the files"
            reader.execute("COMMIT")  # lets go of the WAL; the connection stays open

            node = ServerProcess(data_dir).start()
            for name, content in file_bytes(data_dir).items():
                assert wrapped[doomed] not in content, f"the shredded KEK is still in {name}"
            assert any(wrapped[survivor] in c for c in file_bytes(data_dir).values())
            ok(node.url, "DescribeKey", {"KeyId": survivor})
    finally:
        node.stop()


# -- (d) the shred's checkpoint never holds up a commit ---------------------------------------
REGION = "us-east-1"


def described(key_id: str, text: str) -> ev.KeyDescriptionUpdated:
    return ev.KeyDescriptionUpdated(key_id=key_id, description=text)


async def test_a_shred_while_a_reader_holds_the_wal_never_holds_up_later_commits(
        tmp_path: Path) -> None:
    """The checkpoint after a shred runs without a busy handler: while a reader holds an
    old snapshot each commit is answered at once, the checkpoint stays owed (one warning)
    and is tried again after each commit, and it finishes after the reader lets go."""
    path = tmp_path / LOG_FILE
    log = SqliteLog(path, REGION)
    await log.open()
    kek = os.urandom(48)  # stands in for a wrapped KEK
    statements: list[str] = []  # what the log's connection runs, from here on
    try:
        await log.append([Append("key/a", (described("a", "one"),), 0)], at_ms=1,
                         vault=[VaultChange("a", kek)])
        await log.db._execute(log.db._conn.set_trace_callback, statements.append)
        with closing(snapshot_reader(path)) as reader:
            with capture_logs() as logs:
                await log.append([Append("key/a", (described("a", "shred"),), 1)], at_ms=2,
                                 vault=[VaultChange("a", None)])
                for n in range(3):  # later commits, answered while the reader holds on
                    await log.append([Append("key/a", (described("a", str(n)),), 2 + n)],
                                     at_ms=3 + n)
            assert reader.in_transaction
            assert [e["event"] for e in logs if e["event"].startswith("wal_checkpoint")] == [
                "wal_checkpoint_incomplete"]  # once, not once per commit
            attempts = [i for i, sql in enumerate(statements) if "wal_checkpoint" in sql]
            assert len(attempts) == 4  # after the shred and after each later commit
            assert all(statements[i - 1] == "PRAGMA busy_timeout=0" and
                       statements[i + 1] == "PRAGMA busy_timeout=2000" for i in attempts)
            assert any(kek in c for c in file_bytes(tmp_path).values())  # still owed
            reader.execute("COMMIT")

        with capture_logs() as logs:
            await log.append([Append("key/a", (described("a", "after"),), 5)], at_ms=10)
        assert [e["event"] for e in logs] == ["wal_checkpoint_completed"]
        for name, content in file_bytes(tmp_path).items():
            assert kek not in content, f"the shredded KEK is still in {name}"
        tried = len([sql for sql in statements if "wal_checkpoint" in sql])
        await log.append([Append("key/a", (described("a", "owed no more"),), 6)], at_ms=11)
        assert len([sql for sql in statements if "wal_checkpoint" in sql]) == tried
    finally:
        await log.close()


async def test_a_shred_that_did_not_commit_owes_no_checkpoint(tmp_path: Path) -> None:
    """A batch that drops one KEK and stores another fails on a full disk: nothing of it
    is stored, the KEK is still there, and no checkpoint is owed for it."""
    path = tmp_path / LOG_FILE
    log = SqliteLog(path, REGION)
    await log.open()
    kek = os.urandom(48)
    try:
        await log.append([Append("key/a", (described("a", "one"),), 0)], at_ms=1,
                         vault=[VaultChange("a", kek)])
        async with log.db.execute("PRAGMA page_count") as cur:
            row = await cur.fetchone()
        assert row is not None
        await log.db.execute(f"PRAGMA max_page_count={row[0]}")  # the disk is now full
        with pytest.raises(KMSInternalException, match="^The event log could not commit"):
            await log.append([], at_ms=2, vault=[VaultChange("a", None),
                                                 VaultChange("b", os.urandom(100_000))])
        await log.db.execute("PRAGMA max_page_count=1073741823")
        assert log.vault == {"a": kek}

        with closing(snapshot_reader(path)) as reader, capture_logs() as logs:
            await log.append([Append("key/a", (described("a", "two"),), 1)], at_ms=3)
            assert reader.in_transaction
        assert not [e for e in logs if e["event"].startswith("wal_checkpoint")]
    finally:
        await log.close()
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT wrapped FROM vault WHERE key_id = 'a'").fetchone() == (kek,)
