"""``kms audit prune --endpoint URL``: a running node prunes its own log.

The prune runs through the node's writer while a follower long-polls the stream and calls go
on: the follower sees every call once, in order; only exported audit facts older than the age
go, key state events never; both verifications pass and export resumes; a cursor to a pruned
position answers 410 ExpiredCursorException (also after a restart); the prune leaves one
record of who pruned what. A principal not in ``admins``, a bad age and a log with nothing
exported are refused, and nothing changes but the call's own audit fact.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from contextlib import closing
from pathlib import Path
from typing import Any

from tests.conftest import client_for
from tests.support.audit_stream import AUDITOR, READ, audit, read_all
from tests.support.expect import eventually
from tests.support.secured import ACCOUNT, ALICE, ALLOW_ALL
from tests.support.server import ServerProcess

ROOT = Path(__file__).resolve().parents[2]
LOG_FILE = "events.sqlite3"
PRUNE = "PruneAuditStream"
COLUMNS = "seq, stream, version, type, origin_region, origin_seq, at_ms, body, prev_hash, hash"
CHECKPOINTS = {"KMS_CHECKPOINT_ROWS": "5"}  # signed checkpoints while the node runs


def kms_audit(*args: str | Path, env: dict[str, str] | None = None,
              ) -> subprocess.CompletedProcess[str]:
    """``kms audit ...`` as a user runs it."""
    return subprocess.run([sys.executable, "-m", "regions.cli", "audit", *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300, env=env)


class Follower:
    """A consumer long-polling the stream in a thread from its cursor."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.records: list[dict[str, Any]] = []
        self.refusals: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        cursor = ""
        while not self._stop.is_set():
            status, body = audit(self.url, after=cursor, wait=2)
            if status != 200:
                self.refusals.append(body)
                return
            self.records += body["Records"]
            cursor = body["NextCursor"]

    def request_ids(self) -> list[str]:
        return [r["requestID"] for r in self.records if r["eventName"] not in (READ, PRUNE)]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def rows(data_dir: Path, audit: bool) -> list[tuple[Any, ...]]:
    op = "=" if audit else "!="
    with closing(sqlite3.connect(f"file:{data_dir / LOG_FILE}?mode=ro", uri=True)) as db:
        return db.execute(f"SELECT {COLUMNS} FROM events WHERE stream {op} 'audit' "
                          "ORDER BY seq").fetchall()


def some_calls(kms: Any, made: list[str], n: int = 3) -> None:
    """A key and a use of it per round; the request ids appended to ``made``."""
    for i in range(n):
        created = kms.create_key(Description=f"prune {i}")
        made.append(created["ResponseMetadata"]["RequestId"])
        key = created["KeyMetadata"]["KeyId"]
        made.append(kms.encrypt(KeyId=key, Plaintext=b"x")["ResponseMetadata"]["RequestId"])


def test_a_running_node_prunes_while_a_follower_reads_and_calls_go_on(tmp_path: Path) -> None:
    data_dir, out = tmp_path / "d", tmp_path / "export"
    node = ServerProcess(data_dir, env=CHECKPOINTS).start()
    follower = Follower(node.url)
    try:
        kms: Any = client_for(node.url)
        made: list[str] = []
        some_calls(kms, made)
        early_status, early = audit(node.url, limit=1)  # a cursor the prune will pass
        assert early_status == 200
        node.post("/_kms/clock", {"advance_seconds": 100 * 86400})
        some_calls(kms, made)

        # --data-dir on a running node's dir: one line saying what to do instead
        offline = kms_audit("prune", "--data-dir", data_dir, "--older-than", "90d")
        assert offline.returncode == 2
        assert len(offline.stderr.strip().splitlines()) == 1
        assert "--endpoint" in offline.stderr and "stop the node before pruning" in offline.stderr

        assert kms_audit("export", "--data-dir", data_dir, "--to", out).returncode == 0
        first_export = json.loads((data_dir / "audit-exported.json").read_text())["last_seq"]
        state_before, audit_before = rows(data_dir, False), rows(data_dir, True)

        pruned = kms_audit("prune", "--endpoint", node.url, "--older-than", "90d")
        print(f"\n  {pruned.stdout.strip()}")
        assert pruned.returncode == 0, pruned.stderr
        assert pruned.stdout.startswith("pruned ") and "signed checkpoint at seq" in pruned.stdout

        some_calls(kms, made)  # calls go on; the follower keeps reading from its cursor
        eventually(lambda: follower.request_ids() == made, "the follower to see every call")

        now_ms = max(r[6] for r in rows(data_dir, True))
        audit_after = rows(data_dir, True)
        assert rows(data_dir, False)[:len(state_before)] == state_before  # state never goes
        gone = [r for r in audit_before if r not in audit_after]
        assert gone and all(r[6] < now_ms - 90 * 86400 * 1000 and r[0] <= first_export
                            for r in gone)  # only exported facts older than the age

        # who pruned what: one record, durable before the answer
        records = read_all(node.url)
        prunes = [r for r in records if r["eventName"] == PRUNE]
        assert len(prunes) == 1 and "errorCode" not in prunes[0]
        assert prunes[0]["userIdentity"]["arn"].endswith(":root")
        assert prunes[0]["requestParameters"] == {"olderThanSeconds": 90 * 86400}
        assert prunes[0]["responseElements"]["prunedFacts"] == len(gone)
        assert all(r["eventTime"] >= prunes[0]["responseElements"]["prunedBefore"]
                   for r in records)  # a reader from the start sees nothing pruned
        status, body = audit(node.url, after=early["NextCursor"])
        assert status == 410 and body["__type"] == "ExpiredCursorException", body

        live = kms_audit("verify", "--data-dir", data_dir)  # the node still running
        assert live.returncode == 0, live.stdout
        again = kms_audit("export", "--data-dir", data_dir, "--to", out)
        assert again.returncode == 0, again.stderr
        assert kms_audit("verify", out).returncode == 0
    finally:
        follower.stop()
        node.stop()
    assert follower.refusals == []
    ids = [r["eventID"] for r in follower.records]
    assert len(ids) == len(set(ids))  # each record once
    node.start()  # start-up accepts the cut; the pruned position stays expired
    try:
        status, body = audit(node.url, after=early["NextCursor"])
        assert status == 410 and body["__type"] == "ExpiredCursorException", body
    finally:
        node.stop()
    assert kms_audit("verify", "--data-dir", data_dir).returncode == 0


# -- refusals on a secured node ---------------------------------------------------------------
ADMIN = f"arn:aws:iam::{ACCOUNT}:user/auditor"
AS_ADMIN = ["--access-key", AUDITOR[0], "--secret-key", AUDITOR[1]]
AS_ALICE = ["--access-key", ALICE[0], "--secret-key", ALICE[1]]
CONFIG = f"""
account_id = "{ACCOUNT}"
admins = ["{ADMIN}"]
audit_readers = ["{ADMIN}"]

[[principals]]
arn = "arn:aws:iam::{ACCOUNT}:user/alice"
access_key_id = "{ALICE[0]}"
secret_access_key = "{ALICE[1]}"
policies = ['{ALLOW_ALL}']

[[principals]]
arn = "{ADMIN}"
access_key_id = "{AUDITOR[0]}"
secret_access_key = "{AUDITOR[1]}"
"""


def refusal_only(data_dir: Path, before: list[tuple[Any, ...]], state: list[tuple[Any, ...]],
                 ) -> None:
    """Nothing changed but one new audit fact (the refused call's)."""
    after = rows(data_dir, True)
    assert after[:len(before)] == before and len(after) == len(before) + 1
    assert rows(data_dir, False) == state


def test_a_non_admin_a_bad_age_and_nothing_exported_are_refused(tmp_path: Path) -> None:
    config = tmp_path / "kms.toml"
    config.write_text(CONFIG)
    data_dir = tmp_path / "d"
    node = ServerProcess(data_dir, dev=False, env=CHECKPOINTS,
                         extra=["--config", str(config)]).start()
    try:
        alice: Any = client_for(node.url, access_key=ALICE[0], secret=ALICE[1])
        some_calls(alice, [], 4)
        prune = ["prune", "--endpoint", node.url, "--older-than", "0s"]

        state, before = rows(data_dir, False), rows(data_dir, True)
        unexported = kms_audit(*prune, *AS_ADMIN)
        assert unexported.returncode == 1
        assert unexported.stderr.startswith("kms audit prune: error: KMSInvalidStateException: "
                                            "Nothing is exported yet")
        refusal_only(data_dir, before, state)

        assert kms_audit("export", "--data-dir", data_dir, "--to", tmp_path / "out",
                         ).returncode == 0
        before = rows(data_dir, True)
        denied = kms_audit(*prune, *AS_ALICE)
        assert denied.returncode == 1
        assert denied.stderr.strip() == (
            f"kms audit prune: error: AccessDeniedException: User: arn:aws:iam::{ACCOUNT}:"
            "user/alice is not authorized to prune the audit stream: it is not named in admins")
        refusal_only(data_dir, before, state)

        usage = kms_audit("prune", "--endpoint", node.url, "--older-than", "90 days", *AS_ADMIN)
        assert usage.returncode == 2 and "is not an age like 90d" in usage.stderr
        assert len(rows(data_dir, True)) == len(before) + 1  # refused before any call

        bad = _signed_post(node.url, {"OlderThanSeconds": -1})
        assert bad[0] == 400 and bad[1]["__type"] == "ValidationException", bad
        assert "at 'OlderThanSeconds' failed to satisfy constraint" in bad[1]["message"]
        assert len(rows(data_dir, True)) == len(before) + 2

        records = read_all(node.url, cred=AUDITOR)
        refused = [r for r in records if r["eventName"] == PRUNE]
        assert [r.get("errorCode") for r in refused] == [
            "KMSInvalidStateException", "AccessDenied", "ValidationException"]
        assert refused[1]["userIdentity"]["arn"] == f"arn:aws:iam::{ACCOUNT}:user/alice"

        done = kms_audit(*prune, *AS_ADMIN)  # the admin may
        assert done.returncode == 0 and done.stdout.startswith("pruned "), done
        assert len(rows(data_dir, True)) < len(before)
        assert kms_audit("verify", "--data-dir", data_dir).returncode == 0
    finally:
        node.stop()


def _signed_post(url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    data = json.dumps(body).encode()
    req = AWSRequest(method="POST", url=url + "/_kms/audit/prune", data=data,
                     headers={"Content-Type": "application/json"})
    SigV4Auth(Credentials(*AUDITOR), "kms",
              "us-east-1").add_auth(req)
    try:
        with urllib.request.urlopen(urllib.request.Request(
                req.url, data=data, method="POST", headers=dict(req.headers.items())),
                timeout=60) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_a_reset_forgets_what_was_exported_so_a_prune_cannot_trust_it(tmp_path: Path) -> None:
    """``/_kms/reset`` wipes the log an export covered: the export mark goes with it, so a
    prune of the new log is refused until the new log is exported."""
    data_dir = tmp_path / "d"
    node = ServerProcess(data_dir, env=CHECKPOINTS).start()
    try:
        kms: Any = client_for(node.url)
        some_calls(kms, [], 3)
        assert kms_audit("export", "--data-dir", data_dir, "--to", tmp_path / "out",
                         ).returncode == 0
        node.reset()
        some_calls(kms, [], 3)
        before = rows(data_dir, True)
        refused = kms_audit("prune", "--endpoint", node.url, "--older-than", "0s")
        assert refused.returncode == 1
        assert refused.stderr.startswith("kms audit prune: error: KMSInvalidStateException: "
                                         "Nothing is exported yet"), refused.stderr
        assert [r[0] for r in rows(data_dir, True)][:len(before)] == [r[0] for r in before]
    finally:
        node.stop()
