"""Reading the audit stream in tests: one ``GET /_kms/audit`` (SigV4-signed when given a
credential), every record from the start, the records of API calls, a response's record by
its request id, ``kms audit tail`` as a subprocess, and the configs of secured nodes with an
audit reader (one account, or a second account's caller too).

Rules: a read returns (HTTP status, body) and never raises for an HTTP error; the stream's
own reads are ``ReadAuditStream`` records.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from tests.conftest import ACCOUNT, REGION
from tests.support.secured import ALICE, ALLOW_ALL
from tests.support.server import ServerProcess

READ = "ReadAuditStream"
AWS_DATE = re.compile(r"^[A-Z][a-z]{2} \d{1,2}, \d{4}, \d{1,2}:\d\d:\d\d [AP]M$")
EVENT_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def audit(url: str, *, after: str = "", limit: int = 1000, wait: float = 0,
          region: str | None = None, cred: tuple[str, str] | None = None,
          account: str | None = None) -> tuple[int, dict[str, Any]]:
    """(HTTP status, body) of one read, SigV4-signed with ``cred`` if given."""
    query = {"limit": str(limit)}
    if after:
        query["after"] = after
    if account:
        query["account"] = account
    if wait:
        query["wait"] = str(wait)
    if region:
        query["region"] = region
    full = f"{url}/_kms/audit?{urllib.parse.urlencode(query)}"
    headers: dict[str, str] = {}
    if cred is not None:
        req = AWSRequest(method="GET", url=full)
        SigV4Auth(Credentials(*cred), "kms", region or REGION).add_auth(req)
        headers = dict(req.headers.items())
    try:
        with urllib.request.urlopen(urllib.request.Request(full, headers=headers),
                                    timeout=60) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def read_all(url: str, **kw: Any) -> list[dict[str, Any]]:
    """Every record from the start (several pages if need be)."""
    out: list[dict[str, Any]] = []
    cursor = ""
    while True:
        status, body = audit(url, after=cursor, **kw)
        assert status == 200, body
        out += body["Records"]
        cursor = body["NextCursor"]
        if not body["Records"]:
            return out


def calls(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records of API calls (not the stream's own reads)."""
    return [r for r in records if r["eventName"] != READ]


def rid(response_or_error: Any) -> str:
    meta = (response_or_error.response if isinstance(response_or_error, ClientError)
            else response_or_error)["ResponseMetadata"]
    return str(meta["RequestId"])


def by_request(records: list[dict[str, Any]], response: Any) -> dict[str, Any]:
    found = [r for r in records if r["requestID"] == rid(response)]
    assert len(found) == 1, found
    return found[0]


def tail(url: str, *args: str, env: dict[str, str] | None = None,
         ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "regions.cli", "audit", "tail",
                           "--endpoint", url, *args], capture_output=True, text=True,
                          timeout=60, env={**os.environ, **(env or {})})


# -- secured nodes: an audit reader, and the principals the reads are about ---------------
AUDITOR = ("AKIAAUDITOR000000001", "auditor-secret-key")
MALLORY = ("AKIAMALLORY000000001", "mallory-secret-key")
# The auditor (an audit reader) and alice, whom every config here names.
AUDITOR_AND_ALICE = f"""
account_id = "{ACCOUNT}"
audit_readers = ["arn:aws:iam::{ACCOUNT}:user/auditor"]
[[principals]]
arn = "arn:aws:iam::{ACCOUNT}:user/auditor"
access_key_id = "{AUDITOR[0]}"
secret_access_key = "{AUDITOR[1]}"
[[principals]]
arn = "arn:aws:iam::{ACCOUNT}:user/alice"
access_key_id = "{ALICE[0]}"
secret_access_key = "{ALICE[1]}"
policies = ['{ALLOW_ALL}']
"""
SECURED = AUDITOR_AND_ALICE + f"""[[principals]]
arn = "arn:aws:iam::{ACCOUNT}:user/mallory"
access_key_id = "{MALLORY[0]}"
secret_access_key = "{MALLORY[1]}"
"""


def secured_node(tmp_path: Path, config: str) -> ServerProcess:
    """A non-dev node on ``config``, started."""
    (tmp_path / "kms.toml").write_text(config)
    return ServerProcess(tmp_path / "d", dev=False,
                         extra=["--config", str(tmp_path / "kms.toml")]).start()


OTHER = "444455556666"
OLGA = ("AKIAOLGA000000000001", "olga-secret-key")
CROSS = AUDITOR_AND_ALICE + f"""[[principals]]
arn = "arn:aws:iam::{OTHER}:user/olga"
access_key_id = "{OLGA[0]}"
secret_access_key = "{OLGA[1]}"
policies = ['{ALLOW_ALL}']
"""
