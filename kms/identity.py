"""Credentials and the principals they act for.

Rules: secrets live only in ``credentials.json`` in the data dir (mode 0600) and
are printed once, when the root credential is first created; they never reach a
log line or an audit record (the access key id does, as AWS records it).
"""

from __future__ import annotations

import json
import secrets
import string
from dataclasses import dataclass
from pathlib import Path

from kms.files import create_secret_file

CREDENTIALS_FILE = "credentials.json"
_AK_ALPHABET = string.ascii_uppercase + "234567"


@dataclass(frozen=True, slots=True)
class Principal:
    arn: str
    account: str


@dataclass(frozen=True, slots=True)
class Credential:
    access_key_id: str
    secret_access_key: str
    principal: Principal


class Credentials:
    def __init__(self, creds: list[Credential]) -> None:
        self._by_id = {c.access_key_id: c for c in creds}

    def secret(self, access_key_id: str) -> str | None:
        c = self._by_id.get(access_key_id)
        return c.secret_access_key if c else None

    def principal(self, access_key_id: str) -> Principal | None:
        c = self._by_id.get(access_key_id)
        return c.principal if c else None

    @classmethod
    def load_or_create(cls, data_dir: Path, account: str) -> tuple[Credentials, Credential | None]:
        """Load the stored credentials; on first start create the account root's.
        Returns the new credential (to print once) or None."""
        path = data_dir / CREDENTIALS_FILE
        if path.exists():
            doc = json.loads(path.read_text())
            return cls([_from_doc(d) for d in doc["credentials"]]), None
        root = Credential(
            "AKIA" + "".join(secrets.choice(_AK_ALPHABET) for _ in range(16)),
            secrets.token_urlsafe(30)[:40],
            Principal(f"arn:aws:iam::{account}:root", account),
        )
        doc = {"credentials": [{"access_key_id": root.access_key_id,
                                "secret_access_key": root.secret_access_key,
                                "principal_arn": root.principal.arn, "account": account}]}
        create_secret_file(path, json.dumps(doc, indent=2).encode())
        return cls([root]), root


def _from_doc(d: dict[str, str]) -> Credential:
    return Credential(d["access_key_id"], d["secret_access_key"],
                      Principal(d["principal_arn"], d["account"]))
