"""How a multi-region key's material reaches replicas in the hard cases, on one
``kms serve --dev``: a rotation racing ReplicateKey, an EXTERNAL primary's replica taking the
same bytes by import (never sent), sealed material a region can no longer open (no
synchronization recorded), and a region replicated into again after its replica was deleted."""

from __future__ import annotations

import os
import shutil
import sqlite3
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import msgpack
import pytest

from kms.domain import multi_region as mr
from tests.api.test_import import import_material
from tests.conftest import client_for
from tests.support.expect import eventually
from tests.support.multi_region_dev import (
    DAY,
    PRIMARY,
    REPLICA,
    clients,
    config_in,
    dev_node,
    error_of,
    region_dir,
    replicate,
    shared_rows,
    state_in,
    types_in,
)
from tests.support.server import ServerProcess

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from dev_node(tmp_path_factory)


@pytest.fixture(scope="module")
def kms(node: ServerProcess) -> dict[str, Any]:
    return clients(node)


# -- races, imported material, unreadable material, replicating again ----------------------------
def test_a_rotation_racing_replicate_key_still_reaches_the_new_replica(
        node: ServerProcess, kms: dict[str, Any]) -> None:
    rotator = client_for(node.url, region=PRIMARY)  # a second client, in its own thread
    key_ids = [kms[PRIMARY].create_key(MultiRegion=True)["KeyMetadata"]["KeyId"]
               for _ in range(15)]
    with ThreadPoolExecutor(2) as pool:
        for key_id in key_ids:
            both = threading.Barrier(2)

            def replicate_now(k: str = key_id, b: threading.Barrier = both) -> Any:
                b.wait()
                return kms[PRIMARY].replicate_key(KeyId=k, ReplicaRegion=REPLICA)

            def rotate_now(k: str = key_id, b: threading.Barrier = both) -> Any:
                b.wait()
                return rotator.rotate_key_on_demand(KeyId=k)

            for done in [pool.submit(replicate_now), pool.submit(rotate_now)]:
                done.result()

    for key_id in key_ids:
        blob = kms[PRIMARY].encrypt(KeyId=key_id, Plaintext=b"after")["CiphertextBlob"]
        eventually(lambda k=key_id, b=blob: kms[REPLICA].decrypt(
            KeyId=k, CiphertextBlob=b)["Plaintext"] == b"after",
            f"the replica of {key_id} to decrypt with the rotated version")
        current = kms[PRIMARY].describe_key(KeyId=key_id)["KeyMetadata"]["CurrentKeyMaterialId"]
        md = kms[REPLICA].describe_key(KeyId=key_id)["KeyMetadata"]
        assert (md["KeyState"], md["CurrentKeyMaterialId"]) == ("Enabled", current)


def test_a_replica_of_an_imported_primary_takes_the_same_material_by_import(
        node: ServerProcess, kms: dict[str, Any]) -> None:
    key_id = kms[PRIMARY].create_key(MultiRegion=True, Origin="EXTERNAL")["KeyMetadata"][
        "KeyId"]
    material = os.urandom(32)
    material_id = import_material(kms[PRIMARY], key_id, material)["KeyMaterialId"]
    blob = kms[PRIMARY].encrypt(KeyId=key_id, Plaintext=b"imported")["CiphertextBlob"]

    kms[PRIMARY].replicate_key(KeyId=key_id, ReplicaRegion=REPLICA)

    eventually(lambda: state_in(kms[REPLICA], key_id) == "PendingImport", "the replica")
    md = kms[REPLICA].describe_key(KeyId=key_id)["KeyMetadata"]
    assert md["Origin"] == "EXTERNAL" and "CurrentKeyMaterialId" not in md
    assert error_of(kms[REPLICA].decrypt, CiphertextBlob=blob)[0] == "KMSInvalidStateException"
    assert not [r for r in shared_rows(region_dir(node, REPLICA) / "events.sqlite3")
                if r[0] == mr.mrk_stream(key_id)]  # no material of it ever left the primary

    code, message = error_of(lambda: import_material(kms[REPLICA], key_id, os.urandom(32)))
    assert code == "IncorrectKeyMaterialException"
    assert message.startswith("The key material you are importing is not the same")
    assert state_in(kms[REPLICA], key_id) == "PendingImport"
    assert "KeyMaterialImported" not in types_in(node, REPLICA, key_id)

    assert import_material(kms[REPLICA], key_id, material)["KeyMaterialId"] == material_id
    md = kms[REPLICA].describe_key(KeyId=key_id)["KeyMetadata"]
    assert (md["KeyState"], md["CurrentKeyMaterialId"]) == ("Enabled", material_id)
    assert kms[REPLICA].decrypt(CiphertextBlob=blob)["Plaintext"] == b"imported"
    back = kms[REPLICA].encrypt(KeyId=key_id, Plaintext=b"from eu")["CiphertextBlob"]
    assert kms[PRIMARY].decrypt(CiphertextBlob=back)["Plaintext"] == b"from eu"

    # Each region's copy is its own: deleting it in the primary leaves the replica's.
    kms[PRIMARY].delete_imported_key_material(KeyId=key_id)
    assert state_in(kms[PRIMARY], key_id) == "PendingImport"
    assert kms[REPLICA].decrypt(CiphertextBlob=blob)["Plaintext"] == b"imported"
    assert state_in(kms[REPLICA], key_id) == "Enabled"


def _audited(node: ServerProcess, region: str, operation: str, arn: str) -> int:
    db = region_dir(node, region) / "events.sqlite3"
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        rows = conn.execute("SELECT body FROM events WHERE type = 'ApiCallRecorded'").fetchall()
    facts = [msgpack.unpackb(body, raw=False) for body, in rows]
    return sum(1 for f in facts if f["operation"] == operation and arn in f["resources"])


def test_material_that_does_not_open_records_no_synchronization(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", region=PRIMARY).start()
    try:
        kms = {r: client_for(server.url, region=r) for r in (PRIMARY, REPLICA)}
        key_id = kms[PRIMARY].create_key(MultiRegion=True)["KeyMetadata"]["KeyId"]
        replicate(kms, key_id, REPLICA)
        # The replica region loses its data (and with it its identity): the primary's log
        # still holds the versions sealed to the identity it had.
        server.stop()
        shutil.rmtree(region_dir(server, REPLICA))
        server.start()
        kms = {r: client_for(server.url, region=r) for r in (PRIMARY, REPLICA)}
        eventually(lambda: state_in(kms[REPLICA], key_id) == "Creating", "the replica again")
        # More wakes of the replica region's reactor: another key replicated there.
        other = kms[PRIMARY].create_key(MultiRegion=True)["KeyMetadata"]["KeyId"]
        replicate(kms, other, REPLICA)
        kms[PRIMARY].rotate_key_on_demand(KeyId=other)
        current = kms[PRIMARY].describe_key(KeyId=other)["KeyMetadata"]["CurrentKeyMaterialId"]
        eventually(lambda: kms[REPLICA].describe_key(KeyId=other)["KeyMetadata"][
            "CurrentKeyMaterialId"] == current, "the other key's rotation")

        arn = kms[REPLICA].describe_key(KeyId=key_id)["KeyMetadata"]["Arn"]
        assert state_in(kms[REPLICA], key_id) == "Creating"
        assert _audited(server, REPLICA, "CreateKey", arn) == 1
        assert _audited(server, REPLICA, "SynchronizeMultiRegionKey", arn) == 0
    finally:
        server.stop()


def test_replicating_again_into_a_region_whose_replica_was_deleted(
        node: ServerProcess, kms: dict[str, Any]) -> None:
    key_id = kms[PRIMARY].create_key(MultiRegion=True)["KeyMetadata"]["KeyId"]
    replicate(kms, key_id, REPLICA, Description="first")
    blob = kms[PRIMARY].encrypt(KeyId=key_id, Plaintext=b"kept")["CiphertextBlob"]
    kms[REPLICA].schedule_key_deletion(KeyId=key_id, PendingWindowInDays=7)
    node.post("/_kms/clock", {"advance_seconds": 8 * DAY})
    eventually(lambda: config_in(kms[PRIMARY], key_id)["replicas"] == [], "the replica gone")
    kms[PRIMARY].rotate_key_on_demand(KeyId=key_id)  # a version the first replica never had
    after = kms[PRIMARY].encrypt(KeyId=key_id, Plaintext=b"after")["CiphertextBlob"]

    out = kms[PRIMARY].replicate_key(KeyId=key_id, ReplicaRegion=REPLICA, Description="second")

    assert out["ReplicaKeyMetadata"]["KeyState"] == "Creating"
    eventually(lambda: state_in(kms[REPLICA], key_id) == "Enabled", "the new replica")
    md = kms[REPLICA].describe_key(KeyId=key_id)["KeyMetadata"]
    assert md["Description"] == "second"
    assert md["CreationDate"] == out["ReplicaKeyMetadata"]["CreationDate"]
    assert [kms[REPLICA].decrypt(CiphertextBlob=b)["Plaintext"] for b in (blob, after)] == [
        b"kept", b"after"]
    for region in (PRIMARY, REPLICA):
        eventually(lambda r=region: config_in(kms[r], key_id)["replicas"] == [REPLICA],
                 f"the new replica in {region}'s set")
