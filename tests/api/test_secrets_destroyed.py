"""Destroyed means destroyed, through a real node, boto3 and its storage read read-only:
DeleteImportedKeyMaterial and material expiry remove that material's vault entry, so
the sealed copy left in old events cannot be opened by anyone holding the root key and
the whole database; importing the same bytes again works as AWS describes; a key's
deletion leaves none of its vault entries; dry-run and refused calls on an AWS managed
alias create nothing."""

from __future__ import annotations

import base64
import os
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from kms.crypto.keyring import kek_context
from kms.crypto.sealing import Sealer, seal_context
from kms.domain import events as ev
from kms.domain.errors import KMSInternalException
from tests.api.test_import import import_material, new_external, pending_import, state_of
from tests.support.expect import advance
from tests.support.expect import refused_message as refused

DAY = 86_400


def _db(data_dir: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{data_dir / 'events.sqlite3'}?mode=ro", uri=True)


def vault(data_dir: Path) -> dict[str, bytes]:
    """The node's vault rows: vault id -> wrapped KEK."""
    with closing(_db(data_dir)) as db:
        return {k: bytes(w) for k, w in db.execute("SELECT key_id, wrapped FROM vault")}


def sealed_copies(data_dir: Path, key_id: str, material_id: str) -> list[ev.Material]:
    """Every sealed copy of one material that the key's events hold."""
    with closing(_db(data_dir)) as db:
        rows = db.execute("SELECT type, body FROM events WHERE stream = ?",
                          (f"key/{key_id}",)).fetchall()
    found = []
    for type_name, body in rows:
        e = ev.decode(type_name, bytes(body))
        m = getattr(e, "material", None)
        if isinstance(m, ev.Material) and m.material_id == material_id:
            found.append(m)
    return found


def opens(data_dir: Path, key_id: str, material: ev.Material) -> bool:
    """Whether any vault entry, unwrapped with the root key, opens this sealed copy."""
    root = Sealer(base64.b64decode((data_dir / "root.key").read_text().strip()))
    for vault_id, wrapped in vault(data_dir).items():
        try:
            kek = Sealer(root.unseal(wrapped, kek_context(vault_id)))
            kek.unseal(material.sealed, seal_context(key_id, material.material_id))
        except KMSInternalException:
            continue
        return True
    return False


def test_deleted_imported_material_cannot_be_opened_from_the_log(kms: Any, server: Any) -> None:
    md = new_external(kms)
    key_id, arn = md["KeyId"], md["Arn"]
    material = os.urandom(32)
    material_id = import_material(kms, key_id, material)["KeyMaterialId"]
    blob = kms.encrypt(KeyId=key_id, Plaintext=b"shredded")["CiphertextBlob"]
    [copy] = sealed_copies(server.data_dir, key_id, material_id)
    assert f"{key_id}/{material_id}" in vault(server.data_dir)
    assert opens(server.data_dir, key_id, copy)  # the check can tell

    kms.delete_imported_key_material(KeyId=key_id)

    rows = vault(server.data_dir)
    assert f"{key_id}/{material_id}" not in rows and key_id in rows
    assert not opens(server.data_dir, key_id, copy)
    refused(kms.decrypt, "KMSInvalidStateException", pending_import(arn), CiphertextBlob=blob)

    # AWS: the same key material may be imported again, and old ciphertexts decrypt.
    again = import_material(kms, key_id, material)
    assert again["KeyMaterialId"] == material_id
    assert kms.decrypt(CiphertextBlob=blob)["Plaintext"] == b"shredded"
    assert not opens(server.data_dir, key_id, copy)  # the new copy has a new KEK
    assert f"{key_id}/{material_id}" in vault(server.data_dir)


def test_expired_material_is_destroyed_the_same_way(kms: Any, server: Any) -> None:
    md = new_external(kms)
    key_id, arn = md["KeyId"], md["Arn"]
    material = os.urandom(32)
    material_id = import_material(kms, key_id, material, ExpirationModel="KEY_MATERIAL_EXPIRES",
                                  ValidTo=advance(server, 0) + DAY)["KeyMaterialId"]
    blob = kms.encrypt(KeyId=key_id, Plaintext=b"expires")["CiphertextBlob"]
    [copy] = sealed_copies(server.data_dir, key_id, material_id)

    advance(server, DAY + 1)

    assert state_of(kms, key_id) == "PendingImport"
    described = kms.describe_key(KeyId=key_id)["KeyMetadata"]
    assert described["CurrentKeyMaterialId"] == material_id
    assert f"{key_id}/{material_id}" not in vault(server.data_dir)
    assert not opens(server.data_dir, key_id, copy)
    refused(kms.decrypt, "KMSInvalidStateException", pending_import(arn), CiphertextBlob=blob)
    import_material(kms, key_id, material)
    assert kms.decrypt(CiphertextBlob=blob)["Plaintext"] == b"expires"


def test_deleted_pending_material_is_destroyed_and_the_key_keeps_working(
        kms: Any, server: Any) -> None:
    key_id = new_external(kms)["KeyId"]
    import_material(kms, key_id, os.urandom(32))
    pending = import_material(kms, key_id, os.urandom(32),
                              ImportType="NEW_KEY_MATERIAL")["KeyMaterialId"]
    [copy] = sealed_copies(server.data_dir, key_id, pending)

    kms.delete_imported_key_material(KeyId=key_id, KeyMaterialId=pending)

    assert not opens(server.data_dir, key_id, copy)
    assert state_of(kms, key_id) == "Enabled"
    blob = kms.encrypt(KeyId=key_id, Plaintext=b"still")["CiphertextBlob"]
    assert kms.decrypt(CiphertextBlob=blob)["Plaintext"] == b"still"


def test_a_deleted_key_leaves_none_of_its_vault_entries(kms: Any, server: Any) -> None:
    key_id = new_external(kms)["KeyId"]
    first = import_material(kms, key_id, os.urandom(32))["KeyMaterialId"]
    second = import_material(kms, key_id, os.urandom(32),
                             ImportType="NEW_KEY_MATERIAL")["KeyMaterialId"]
    kms.rotate_key_on_demand(KeyId=key_id)
    survivor = kms.create_key()["KeyMetadata"]["KeyId"]
    copies = [*sealed_copies(server.data_dir, key_id, first),
              *sealed_copies(server.data_dir, key_id, second)]
    assert {key_id, f"{key_id}/{first}", f"{key_id}/{second}"} <= set(vault(server.data_dir))
    kms.schedule_key_deletion(KeyId=key_id, PendingWindowInDays=7)

    advance(server, 7 * DAY + 1)

    rows = vault(server.data_dir)
    assert not [v for v in rows if v.split("/")[0] == key_id]
    assert survivor in rows
    assert copies and not any(opens(server.data_dir, key_id, c) for c in copies)


@pytest.mark.parametrize("count", [50])
def test_dry_runs_on_an_aws_managed_alias_create_nothing(kms: Any, server: Any,
                                                         count: int) -> None:
    keys_before = kms.list_keys()["Keys"]
    vault_before = vault(server.data_dir)
    # As S3 would call (the AWS managed key's policy allows its use only through S3).
    kms.meta.events.register("before-sign.kms.*", lambda request, **_: request.headers.
                             __setitem__("X-Kms-Via-Service", "s3.us-east-1.amazonaws.com"))

    for _ in range(count):
        refused(kms.encrypt, "DryRunOperationException",
                "The request would have succeeded, but the DryRun option is set.",
                KeyId="alias/aws/s3", Plaintext=b"x", DryRun=True)

    assert kms.list_keys()["Keys"] == keys_before
    aliases = {a["AliasName"]: a for a in kms.list_aliases()["Aliases"]}
    assert "TargetKeyId" not in aliases.get("alias/aws/s3", {})
    assert vault(server.data_dir) == vault_before
    # The first real use creates it, once.
    kms.encrypt(KeyId="alias/aws/s3", Plaintext=b"x")
    assert len(kms.list_keys()["Keys"]) == len(keys_before) + 1
