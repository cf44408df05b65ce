"""The keyring's caches, in process: bounded, never grown by a call that is refused or a
dry run, and emptied of a key's KEK, raw material and parsed private keys when its
deletion (or the deletion of one imported material) commits; a KEK nobody committed is
read only through the staged mapping of its own call, so keyrings of several regions in
one process never see each other's. A real Service and Scheduler over the in-memory log;
nothing of either is mocked."""

from __future__ import annotations

import dataclasses
import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

import kms.service  # noqa: F401  (registers every operation)
from kms.clock import Clock
from kms.crypto.keyring import Keyring
from kms.crypto.sealing import RootKey
from kms.domain.errors import DryRunOperationException, KMSError, KMSInternalException
from kms.schedule import Scheduler
from kms.service.core import Caller, Service
from kms.store.log import MemoryLog
from tests.api.test_import import wrap

ACCOUNT = "111122223333"
ROOT = Caller(f"arn:aws:iam::{ACCOUNT}:root", ACCOUNT, "AKIDEXAMPLE")
DAY = 86_400


class Region:
    """A service, its scheduler and its keyring over a MemoryLog."""

    def __init__(self, **limits: int) -> None:
        self.log = MemoryLog("us-east-1")
        self.keyring = Keyring(RootKey(os.urandom(32)), self.log.vault, **limits)
        self.clock = Clock()
        self.service = Service(region="us-east-1", account=ACCOUNT, log_=self.log,
                               keyring=self.keyring, clock=self.clock)
        self.scheduler = Scheduler(self.service)

    async def call(self, operation: str, **params: Any) -> Any:
        return await self.service.call(operation, params, ROOT, str(uuid.uuid4()))

    async def refused(self, operation: str, **params: Any) -> KMSError:
        with pytest.raises(KMSError) as info:
            await self.call(operation, **params)
        return info.value

    async def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        await self.scheduler.run_due()

    async def import_material(self, key_id: str, material: bytes,
                              **params: Any) -> dict[str, Any]:
        got = await self.call("GetParametersForImport", KeyId=key_id,
                              WrappingAlgorithm="RSAES_OAEP_SHA_256", WrappingKeySpec="RSA_2048")
        out: dict[str, Any] = await self.call(
            "ImportKeyMaterial", KeyId=key_id, ImportToken=got["ImportToken"],
            EncryptedKeyMaterial=wrap("RSAES_OAEP_SHA_256", got["PublicKey"], material),
            ExpirationModel="KEY_MATERIAL_DOES_NOT_EXPIRE", **params)
        return out


@pytest.fixture
async def region() -> AsyncIterator[Region]:
    r = Region()
    await r.log.open()
    yield r
    await r.log.close()


async def test_dry_runs_and_refused_calls_leave_nothing_in_the_keyring(region: Region) -> None:
    via_s3 = dataclasses.replace(ROOT, via_service="s3.us-east-1.amazonaws.com")
    for _ in range(50):  # as S3 would: the AWS managed key's policy allows only that
        with pytest.raises(DryRunOperationException):
            await region.service.call("Encrypt", {"KeyId": "alias/aws/s3", "Plaintext": b"x",
                                                  "DryRun": True}, via_s3, str(uuid.uuid4()))
    await region.refused("CreateKey", Tags=[{"TagKey": "aws:x", "TagValue": "y"}])

    assert region.keyring.sizes() == {"keks": 0, "raw": 0, "loaded": 0}
    assert region.log.vault == {}
    assert region.service.state.keys == {}


async def test_the_caches_are_bounded_and_refill_from_the_vault() -> None:
    r = Region(max_keks=3, max_materials=3)
    await r.log.open()
    try:
        blobs = {}
        for _ in range(8):
            key_id = (await r.call("CreateKey"))["KeyMetadata"]["KeyId"]
            blobs[key_id] = (await r.call("Encrypt", KeyId=key_id,
                                          Plaintext=key_id.encode()))["CiphertextBlob"]
        sizes = r.keyring.sizes()
        assert sizes["keks"] <= 3 and sizes["raw"] <= 3

        for key_id, blob in blobs.items():  # evicted entries are derived again on use
            assert (await r.call("Decrypt", CiphertextBlob=blob))["Plaintext"] == key_id.encode()
        assert r.keyring.sizes()["keks"] <= 3 and r.keyring.sizes()["raw"] <= 3
    finally:
        await r.log.close()


async def test_a_deleted_key_leaves_no_kek_raw_material_or_private_key_cached(
        region: Region) -> None:
    symmetric = (await region.call("CreateKey"))["KeyMetadata"]["KeyId"]
    signing = (await region.call("CreateKey", KeySpec="ECC_NIST_P256",
                                 KeyUsage="SIGN_VERIFY"))["KeyMetadata"]["KeyId"]
    survivor = (await region.call("CreateKey"))["KeyMetadata"]["KeyId"]
    blob = (await region.call("Encrypt", KeyId=symmetric, Plaintext=b"x"))["CiphertextBlob"]
    await region.call("Sign", KeyId=signing, Message=b"m", SigningAlgorithm="ECDSA_SHA_256")
    await region.call("Encrypt", KeyId=survivor, Plaintext=b"y")
    doomed_material = region.service.state.keys[symmetric].current_material
    assert {symmetric, signing, survivor} <= region.keyring.cached_key_ids()
    assert region.keyring.sizes()["loaded"] == 1  # the parsed ECC private key

    for key_id in (symmetric, signing):
        await region.call("ScheduleKeyDeletion", KeyId=key_id, PendingWindowInDays=7)
    await region.advance(7 * DAY + 1)

    assert region.keyring.cached_key_ids() == {survivor}
    assert region.keyring.sizes()["loaded"] == 0
    assert set(region.log.vault) == {survivor}
    assert doomed_material is not None
    with pytest.raises(KMSInternalException):
        region.keyring.raw(symmetric, doomed_material)
    assert region.keyring.cached_key_ids() == {survivor}  # a failed read caches nothing
    error = await region.refused("Decrypt", CiphertextBlob=blob)
    assert error.code == "InvalidCiphertextException"


async def test_deleted_imported_material_leaves_no_cached_copy(region: Region) -> None:
    key_id = (await region.call("CreateKey", Origin="EXTERNAL"))["KeyMetadata"]["KeyId"]
    material_id = (await region.import_material(key_id, os.urandom(32)))["KeyMaterialId"]
    await region.call("Encrypt", KeyId=key_id, Plaintext=b"x")
    material = region.service.state.keys[key_id].material(material_id)
    assert material is not None and material.vault_id == f"{key_id}/{material_id}"
    assert material.vault_id in region.log.vault

    await region.call("DeleteImportedKeyMaterial", KeyId=key_id)

    assert material.vault_id not in region.log.vault
    assert key_id in region.log.vault  # the key (and its import parameters) live on
    with pytest.raises(KMSInternalException):
        region.keyring.raw(key_id, material)
    assert material.vault_id not in region.keyring.cached_vault_ids()


def test_two_keyrings_in_one_process_never_see_each_others_staged_keks() -> None:
    """Regions of one process (each its own root key, vault and keyring) read an
    uncommitted KEK only through the staged mapping their own call passes in: nothing
    process-wide, nothing left behind once the call is over, nothing cached."""
    vault_a: dict[str, bytes] = {}
    vault_b: dict[str, bytes] = {}
    a = Keyring(RootKey(os.urandom(32)), vault_a)
    b = Keyring(RootKey(os.urandom(32)), vault_b)
    key_id = str(uuid.uuid4())  # the same key id in both regions (as a multi-Region key's)
    staged_a = {key_id: a.new_kek(key_id)}
    staged_b = {key_id: b.new_kek(key_id)}
    in_a = a.seal(key_id, b"a" * 32, staged=staged_a)
    in_b = b.seal(key_id, b"b" * 32, staged=staged_b)

    assert a.raw(key_id, in_a, staged=staged_a) == b"a" * 32
    assert b.raw(key_id, in_b, staged=staged_b) == b"b" * 32
    # Without its own call's staged KEK, neither keyring reaches a KEK nobody committed,
    # whatever the other region's call is doing at the same moment.
    for keyring, material in ((a, in_a), (b, in_b), (a, in_b), (b, in_a)):
        with pytest.raises(KMSInternalException):
            keyring.raw(key_id, material)
        with pytest.raises(KMSInternalException):
            keyring.loaded(key_id, material, bytes)
    with pytest.raises(KMSInternalException):
        b.seal(key_id, b"x" * 32)
    assert a.sizes() == b.sizes() == {"keks": 0, "raw": 0, "loaded": 0}

    vault_a.update(staged_a)  # region A's call commits; region B's never does
    assert a.raw(key_id, in_a) == b"a" * 32
    assert a.cached_vault_ids() == {key_id}
    with pytest.raises(KMSInternalException):
        b.raw(key_id, in_b)
    assert b.sizes() == {"keks": 0, "raw": 0, "loaded": 0}

