"""Rotating an imported (EXTERNAL) multi-region key across its members, in one ``--dev``
node: new material into the primary (NEW_KEY_MATERIAL) waits in
PENDING_MULTI_REGION_IMPORT_AND_ROTATION until every replica imported the same bytes
(EXISTING_KEY_MATERIAL), then PENDING_ROTATION; RotateKeyOnDemand on the primary makes it
CURRENT in every member. Refusals in AWS's words with nothing changed; the bytes never
travel (only ids on the shared stream)."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kms.domain import multi_region as mr
from tests.api.test_import import import_material
from tests.conftest import client_for
from tests.support.expect import eventually, refused, refused_message
from tests.support.server import ServerProcess

pytestmark = pytest.mark.slow

PRIMARY, EU, AP = "us-east-1", "eu-west-1", "ap-southeast-2"
PENDING_MR = "PENDING_MULTI_REGION_IMPORT_AND_ROTATION"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path_factory.mktemp("mrk-import") / "data",
                           region=PRIMARY).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def kms(node: ServerProcess) -> dict[str, Any]:
    return {r: client_for(node.url, region=r) for r in (PRIMARY, EU, AP)}


def _db(node: ServerProcess, region: str) -> Path:
    base = node.data_dir if region == node.region else node.data_dir / "regions" / region
    return base / "events.sqlite3"


def _rows(node: ServerProcess, region: str, key_id: str) -> list[tuple[str, str, bytes]]:
    with sqlite3.connect(f"file:{_db(node, region)}?mode=ro", uri=True) as conn:
        rows = conn.execute("SELECT stream, type, body FROM events WHERE stream IN (?, ?) "
                            "ORDER BY seq", (f"key/{key_id}", mr.mrk_stream(key_id))).fetchall()
    return [(s, t, bytes(b)) for s, t, b in rows]


def _types(node: ServerProcess, region: str, key_id: str) -> list[str]:
    """The key's event types there, less GetParametersForImport's (each import asks)."""
    return [t for _, t, _ in _rows(node, region, key_id) if t != "ImportParametersIssued"]


def states(client: Any, key_id: str) -> dict[str, str]:
    out = client.list_key_rotations(KeyId=key_id, IncludeKeyMaterial="ALL_KEY_MATERIAL")
    return {r["KeyMaterialId"]: r["KeyMaterialState"] for r in out["Rotations"]}


def current(client: Any, key_id: str) -> str:
    return str(client.describe_key(KeyId=key_id)["KeyMetadata"].get("CurrentKeyMaterialId"))


def imported_set(kms: dict[str, Any], first: bytes) -> tuple[str, str]:
    """An EXTERNAL primary with the same first material in two replicas."""
    key_id = kms[PRIMARY].create_key(MultiRegion=True, Origin="EXTERNAL")["KeyMetadata"][
        "KeyId"]
    mid = import_material(kms[PRIMARY], key_id, first)["KeyMaterialId"]
    for region in (EU, AP):
        kms[PRIMARY].replicate_key(KeyId=key_id, ReplicaRegion=region)
        eventually(lambda r=region: kms[r].describe_key(KeyId=key_id)["KeyMetadata"][
            "KeyState"] == "PendingImport", f"the replica in {region}")
        import_material(kms[region], key_id, first)
    return key_id, mid


def test_new_material_waits_for_every_replica_then_rotates_in_every_member(
        node: ServerProcess, kms: dict[str, Any]) -> None:
    first, second = os.urandom(32), os.urandom(32)
    key_id, id1 = imported_set(kms, first)
    arn = kms[PRIMARY].describe_key(KeyId=key_id)["KeyMetadata"]["Arn"]
    old_blob = kms[PRIMARY].encrypt(KeyId=key_id, Plaintext=b"first")["CiphertextBlob"]

    id2 = import_material(kms[PRIMARY], key_id, second,
                          ImportType="NEW_KEY_MATERIAL")["KeyMaterialId"]
    assert states(kms[PRIMARY], key_id) == {id1: "CURRENT", id2: PENDING_MR}

    # RotateKeyOnDemand before every replica has it: refused, nothing changes.
    before = _types(node, PRIMARY, key_id)
    refused(kms[PRIMARY].rotate_key_on_demand, "KMSInvalidStateException",
            f"No available key material pending rotation for the key: {arn}.", KeyId=key_id)
    assert _types(node, PRIMARY, key_id) == before
    assert current(kms[PRIMARY], key_id) == id1

    # A replica cannot take new material of its own, nor other bytes as the primary's.
    eu_arn = kms[EU].describe_key(KeyId=key_id)["KeyMetadata"]["Arn"]
    eu_before = _types(node, EU, key_id)
    message = refused_message(lambda **p: import_material(kms[EU], key_id, second, **p),
                              "UnsupportedOperationException", ImportType="NEW_KEY_MATERIAL")
    assert message.startswith(f"{eu_arn} is not a multi-Region primary key.")
    refused(lambda **p: import_material(kms[EU], key_id, os.urandom(32), **p),
            "IncorrectKeyMaterialException",
            "The key material you are importing is not the same as the key material of the "
            f"primary key {arn}.", ImportType="EXISTING_KEY_MATERIAL", KeyMaterialId=id2)
    assert _types(node, EU, key_id) == eu_before

    # One replica imports it: the primary still waits for the other.
    assert import_material(kms[EU], key_id, second, ImportType="EXISTING_KEY_MATERIAL",
                           KeyMaterialId=id2)["KeyMaterialId"] == id2
    assert states(kms[EU], key_id) == {id1: "CURRENT", id2: "PENDING_ROTATION"}
    assert current(kms[EU], key_id) == id1
    eventually(lambda: "ReplicaMaterialImported" in _types(node, PRIMARY, key_id),
               "the primary to hear of eu-west-1's import")
    assert states(kms[PRIMARY], key_id)[id2] == PENDING_MR
    refused(kms[PRIMARY].rotate_key_on_demand, "KMSInvalidStateException", KeyId=key_id)

    # The last replica imports it: PENDING_ROTATION in the primary; then rotation.
    import_material(kms[AP], key_id, second, ImportType="EXISTING_KEY_MATERIAL",
                    KeyMaterialId=id2)
    eventually(lambda: states(kms[PRIMARY], key_id)[id2] == "PENDING_ROTATION",
               "the primary to see every replica holds it")
    code = refused(kms[EU].rotate_key_on_demand, "UnsupportedOperationException",
                   KeyId=key_id)["Error"]["Message"]
    assert code.startswith(f"{eu_arn} is not a multi-Region primary key.")

    kms[PRIMARY].rotate_key_on_demand(KeyId=key_id)
    for region in (PRIMARY, EU, AP):
        eventually(lambda r=region: states(kms[r], key_id) == {
            id1: "NON_CURRENT", id2: "CURRENT"} and current(kms[r], key_id) == id2,
            f"the rotation in {region}")
        rotations = kms[region].list_key_rotations(KeyId=key_id)["Rotations"]
        assert [(r["KeyMaterialId"], r["RotationType"]) for r in rotations] == [
            (id2, "ON_DEMAND")]
    # What each member encrypts now decrypts in every other; the old ciphertext too.
    for src in (PRIMARY, EU, AP):
        blob = kms[src].encrypt(KeyId=key_id, Plaintext=src.encode())["CiphertextBlob"]
        for dst in (PRIMARY, EU, AP):
            assert kms[dst].decrypt(CiphertextBlob=blob)["Plaintext"] == src.encode()
            assert kms[dst].decrypt(CiphertextBlob=old_blob)["Plaintext"] == b"first"

    # The bytes never travelled: no shared row holds either material.
    for region in (PRIMARY, EU, AP):
        for stream, _, body in _rows(node, region, key_id):
            if stream == mr.mrk_stream(key_id):
                assert first not in body and second not in body


def test_a_primary_without_replicas_rotates_at_once_and_a_late_replica_follows(
        node: ServerProcess, kms: dict[str, Any]) -> None:
    first, second = os.urandom(32), os.urandom(32)
    key_id = kms[PRIMARY].create_key(MultiRegion=True, Origin="EXTERNAL")["KeyMetadata"][
        "KeyId"]
    id1 = import_material(kms[PRIMARY], key_id, first)["KeyMaterialId"]
    id2 = import_material(kms[PRIMARY], key_id, second,
                          ImportType="NEW_KEY_MATERIAL")["KeyMaterialId"]
    assert states(kms[PRIMARY], key_id)[id2] == "PENDING_ROTATION"
    kms[PRIMARY].rotate_key_on_demand(KeyId=key_id)
    blob = kms[PRIMARY].encrypt(KeyId=key_id, Plaintext=b"after")["CiphertextBlob"]

    kms[PRIMARY].replicate_key(KeyId=key_id, ReplicaRegion=EU)
    eventually(lambda: kms[EU].describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"] == (
        "PendingImport"), "the late replica")
    import_material(kms[EU], key_id, first)
    import_material(kms[EU], key_id, second)  # EXISTING_KEY_MATERIAL, the default now
    eventually(lambda: current(kms[EU], key_id) == id2, "the late replica to follow")
    assert states(kms[EU], key_id) == {id1: "NON_CURRENT", id2: "CURRENT"}
    assert kms[EU].decrypt(CiphertextBlob=blob)["Plaintext"] == b"after"


def test_deleting_the_primarys_pending_material_deletes_the_replicas_copy(
        node: ServerProcess, kms: dict[str, Any]) -> None:
    first, second = os.urandom(32), os.urandom(32)
    key_id, id1 = imported_set(kms, first)
    id2 = import_material(kms[PRIMARY], key_id, second,
                          ImportType="NEW_KEY_MATERIAL")["KeyMaterialId"]
    import_material(kms[EU], key_id, second, ImportType="EXISTING_KEY_MATERIAL")
    assert id2 in states(kms[EU], key_id)

    kms[PRIMARY].delete_imported_key_material(KeyId=key_id, KeyMaterialId=id2)
    assert states(kms[PRIMARY], key_id) == {id1: "CURRENT"}
    eventually(lambda: states(kms[EU], key_id) == {id1: "CURRENT"},
               "the replica's copy to go with it")
    for region in (PRIMARY, EU):
        assert kms[region].describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"] == "Enabled"
    # It is no longer the primary's: the other replica cannot take it now.
    refused(lambda **p: import_material(kms[AP], key_id, second, **p),
            "IncorrectKeyMaterialException", ImportType="EXISTING_KEY_MATERIAL")


def test_a_replica_lists_the_primarys_rotation_dates_for_imported_material(
        node: ServerProcess, kms: dict[str, Any]) -> None:
    """A replica that follows an imported-material rotation a day after the primary made it
    lists the primary's RotationDate, as it does for generated material."""
    first, second = os.urandom(32), os.urandom(32)
    key_id = kms[PRIMARY].create_key(MultiRegion=True, Origin="EXTERNAL")["KeyMetadata"][
        "KeyId"]
    id1 = import_material(kms[PRIMARY], key_id, first)["KeyMaterialId"]
    id2 = import_material(kms[PRIMARY], key_id, second,
                          ImportType="NEW_KEY_MATERIAL")["KeyMaterialId"]
    kms[PRIMARY].rotate_key_on_demand(KeyId=key_id)

    node.post("/_kms/clock", {"advance_seconds": 86_400})  # the replica follows a day later
    kms[PRIMARY].replicate_key(KeyId=key_id, ReplicaRegion=AP)
    eventually(lambda: kms[AP].describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"] == (
        "PendingImport"), "the late replica")
    import_material(kms[AP], key_id, first)
    import_material(kms[AP], key_id, second)
    eventually(lambda: current(kms[AP], key_id) == id2, "the late replica to follow")

    def listed(region: str) -> list[dict[str, Any]]:
        out = kms[region].list_key_rotations(KeyId=key_id, IncludeKeyMaterial="ALL_KEY_MATERIAL")
        return [{k: v for k, v in r.items() if k != "KeyId"} for r in out["Rotations"]]

    primary = listed(PRIMARY)
    assert [(r["KeyMaterialId"], r.get("RotationType")) for r in primary] == [
        (id1, None), (id2, "ON_DEMAND")]
    assert listed(AP) == primary
