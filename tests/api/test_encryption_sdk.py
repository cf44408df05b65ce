"""The real AWS Encryption SDK for Python (aws-encryption-sdk) against a real node.

The SDK's KMS master key providers build their own boto3 clients from a botocore session, one
per region named in the key ARNs, so the node's address reaches them the way it reaches any AWS
SDK in a container: the service-specific endpoint variable `AWS_ENDPOINT_URL_KMS` (honoured by
botocore >= 1.31), with dummy credentials and the region in the environment. Nothing is mocked:
each envelope's data key comes from the node's GenerateDataKey/Encrypt and goes back through
its Decrypt.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import botocore.exceptions
import botocore.session
import pytest
from aws_encryption_sdk import (
    Algorithm,
    CommitmentPolicy,
    DiscoveryAwsKmsMasterKeyProvider,
    EncryptionSDKClient,
    StrictAwsKmsMasterKeyProvider,
)
from aws_encryption_sdk.exceptions import (  # noqa: E402
    AWSEncryptionSDKClientError,
    DecryptKeyError,
)
from aws_encryption_sdk.key_providers.kms import (  # noqa: E402
    DiscoveryFilter,
    MRKAwareStrictAwsKmsMasterKeyProvider,
)

from tests.conftest import ACCOUNT, REGION
from tests.support.server import ServerProcess

CONTEXT = {"tenant": "acme", "purpose": "sdk-integration"}
PROVIDER_ID = "aws-kms"
DEFAULT_SUITE = Algorithm.AES_256_GCM_HKDF_SHA512_COMMIT_KEY_ECDSA_P384


@pytest.fixture
def botocore_session(server: ServerProcess, monkeypatch: pytest.MonkeyPatch,
                     tmp_path: Path) -> botocore.session.Session:
    """A botocore session whose KMS clients (whichever the SDK builds) talk to the node."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ENDPOINT_URL_KMS", server.url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    # No user's ~/.aws profile may redirect or re-credential the SDK's clients.
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    return botocore.session.Session()


@pytest.fixture
def esdk() -> EncryptionSDKClient:
    return EncryptionSDKClient(commitment_policy=CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT)


def new_key_arn(kms: Any) -> str:
    arn: str = kms.create_key(Description="encryption sdk")["KeyMetadata"]["Arn"]
    return arn


def strict(session: botocore.session.Session, *key_ids: str) -> StrictAwsKmsMasterKeyProvider:
    return StrictAwsKmsMasterKeyProvider(key_ids=list(key_ids), botocore_session=session)


def edk_key_ids(header: Any) -> list[str]:
    return sorted(e.key_provider.key_info.decode() for e in header.encrypted_data_keys)


# -- one key, encryption context ----------------------------------------------------------
def test_round_trip_with_encryption_context(kms: Any, esdk: EncryptionSDKClient,
                                            botocore_session: Any) -> None:
    arn = new_key_arn(kms)
    provider = strict(botocore_session, arn)
    plaintext = b"the quick brown fox " * 50

    ciphertext, enc_header = esdk.encrypt(source=plaintext, encryption_context=CONTEXT,
                                          key_provider=provider)
    assert plaintext not in ciphertext
    assert [e.key_provider.provider_id for e in enc_header.encrypted_data_keys] == [PROVIDER_ID]
    assert edk_key_ids(enc_header) == [arn]  # GenerateDataKey answered with the key ARN

    decrypted, dec_header = esdk.decrypt(source=ciphertext, key_provider=strict(botocore_session,
                                                                                arn))
    assert decrypted == plaintext
    # The message carries the caller's context (plus the SDK's signing public key).
    for name, value in CONTEXT.items():
        assert dec_header.encryption_context[name] == value
    assert "aws-crypto-public-key" in dec_header.encryption_context


def test_data_key_is_a_node_ciphertext_bound_to_the_context(
        kms: Any, esdk: EncryptionSDKClient, botocore_session: Any) -> None:
    """The SDK's encrypted data key is a blob of the node's, with the message's whole
    encryption context bound as AAD: the node decrypts it with the context and only with it."""
    arn = new_key_arn(kms)
    _, header = esdk.encrypt(source=b"x", encryption_context=CONTEXT,
                             key_provider=strict(botocore_session, arn))
    (edk,) = header.encrypted_data_keys
    blob = edk.encrypted_data_key

    out = kms.decrypt(CiphertextBlob=blob, EncryptionContext=header.encryption_context)
    assert out["KeyId"] == arn
    assert len(out["Plaintext"]) == header.algorithm.kdf_input_len  # the suite's 32-byte key

    for context in ({}, CONTEXT, {**header.encryption_context, "tenant": "other"}):
        with pytest.raises(botocore.exceptions.ClientError) as err:
            kms.decrypt(CiphertextBlob=blob, **({"EncryptionContext": context} if context
                                                else {}))
        assert err.value.response["Error"]["Code"] == "InvalidCiphertextException"


# -- naming keys ---------------------------------------------------------------------------
@pytest.mark.parametrize("naming", ["key id", "key arn", "alias name", "alias arn"])
def test_encrypt_by_any_key_name_decrypt_by_key_arn(kms: Any, esdk: EncryptionSDKClient,
                                                    botocore_session: Any, naming: str) -> None:
    md = kms.create_key()["KeyMetadata"]
    kms.create_alias(AliasName="alias/esdk", TargetKeyId=md["KeyId"])
    key_id = {"key id": md["KeyId"], "key arn": md["Arn"], "alias name": "alias/esdk",
              "alias arn": f"arn:aws:kms:{REGION}:{ACCOUNT}:alias/esdk"}[naming]

    ciphertext, header = esdk.encrypt(source=b"named", encryption_context=CONTEXT,
                                      key_provider=strict(botocore_session, key_id))
    # The node's GenerateDataKey answers with the key's ARN, which the SDK records.
    assert edk_key_ids(header) == [md["Arn"]]

    # Decryption names the key by ARN (the strict provider matches it against the message).
    decrypted, _ = esdk.decrypt(source=ciphertext,
                                key_provider=strict(botocore_session, md["Arn"]))
    assert decrypted == b"named"


def test_multi_region_key_with_mrk_aware_provider(kms: Any, esdk: EncryptionSDKClient,
                                                  botocore_session: Any) -> None:
    arn = kms.create_key(MultiRegion=True)["KeyMetadata"]["Arn"]
    assert ":key/mrk-" in arn
    provider = MRKAwareStrictAwsKmsMasterKeyProvider(key_ids=[arn],
                                                     botocore_session=botocore_session)
    ciphertext, header = esdk.encrypt(source=b"mrk", encryption_context=CONTEXT,
                                      key_provider=provider)
    assert edk_key_ids(header) == [arn]
    assert esdk.decrypt(source=ciphertext, key_provider=provider)[0] == b"mrk"


def test_decrypt_with_discovery_provider(kms: Any, esdk: EncryptionSDKClient,
                                         botocore_session: Any) -> None:
    arn = new_key_arn(kms)
    ciphertext, _ = esdk.encrypt(source=b"discover me", encryption_context=CONTEXT,
                                 key_provider=strict(botocore_session, arn))

    discovery = DiscoveryAwsKmsMasterKeyProvider(
        botocore_session=botocore_session,
        discovery_filter=DiscoveryFilter(account_ids=[ACCOUNT], partition="aws"))
    decrypted, _ = esdk.decrypt(source=ciphertext, key_provider=discovery)
    assert decrypted == b"discover me"

    elsewhere = DiscoveryAwsKmsMasterKeyProvider(
        botocore_session=botocore_session,
        discovery_filter=DiscoveryFilter(account_ids=["444455556666"], partition="aws"))
    with pytest.raises(AWSEncryptionSDKClientError):
        esdk.decrypt(source=ciphertext, key_provider=elsewhere)


def test_provider_without_the_key_cannot_decrypt(kms: Any, esdk: EncryptionSDKClient,
                                                 botocore_session: Any) -> None:
    arn, other = new_key_arn(kms), new_key_arn(kms)
    ciphertext, _ = esdk.encrypt(source=b"not yours", encryption_context=CONTEXT,
                                 key_provider=strict(botocore_session, arn))
    with pytest.raises(DecryptKeyError):
        esdk.decrypt(source=ciphertext, key_provider=strict(botocore_session, other))


# -- several keys --------------------------------------------------------------------------
def test_encrypt_under_two_keys_decrypt_with_the_second(kms: Any, esdk: EncryptionSDKClient,
                                                        botocore_session: Any) -> None:
    first, second = new_key_arn(kms), new_key_arn(kms)
    ciphertext, header = esdk.encrypt(source=b"two recipients", encryption_context=CONTEXT,
                                      key_provider=strict(botocore_session, first, second))
    # GenerateDataKey under the first key, Encrypt of the same data key under the second.
    assert edk_key_ids(header) == sorted([first, second])

    # The first key is out of use: only the second one can open the message now.
    kms.disable_key(KeyId=first)
    decrypted, _ = esdk.decrypt(source=ciphertext, key_provider=strict(botocore_session, second))
    assert decrypted == b"two recipients"

    decrypted, _ = esdk.decrypt(source=ciphertext,
                                key_provider=strict(botocore_session, first, second))
    assert decrypted == b"two recipients"


# -- key state -----------------------------------------------------------------------------
def test_message_under_a_disabled_key_does_not_decrypt(kms: Any, esdk: EncryptionSDKClient,
                                                       botocore_session: Any) -> None:
    arn = new_key_arn(kms)
    ciphertext, _ = esdk.encrypt(source=b"until disabled", encryption_context=CONTEXT,
                                 key_provider=strict(botocore_session, arn))

    kms.disable_key(KeyId=arn)
    with pytest.raises(DecryptKeyError):
        esdk.decrypt(source=ciphertext, key_provider=strict(botocore_session, arn))
    with pytest.raises(AWSEncryptionSDKClientError):  # nor can new messages be made
        esdk.encrypt(source=b"more", key_provider=strict(botocore_session, arn))

    kms.enable_key(KeyId=arn)
    decrypted, _ = esdk.decrypt(source=ciphertext, key_provider=strict(botocore_session, arn))
    assert decrypted == b"until disabled"


def test_message_survives_key_rotation(kms: Any, esdk: EncryptionSDKClient,
                                       botocore_session: Any) -> None:
    arn = new_key_arn(kms)
    before, _ = esdk.encrypt(source=b"old material", encryption_context=CONTEXT,
                             key_provider=strict(botocore_session, arn))
    kms.rotate_key_on_demand(KeyId=arn)
    after, _ = esdk.encrypt(source=b"new material", encryption_context=CONTEXT,
                            key_provider=strict(botocore_session, arn))
    provider = strict(botocore_session, arn)
    assert esdk.decrypt(source=before, key_provider=provider)[0] == b"old material"
    assert esdk.decrypt(source=after, key_provider=provider)[0] == b"new material"


# -- streaming -----------------------------------------------------------------------------
def test_stream_one_mebibyte(kms: Any, esdk: EncryptionSDKClient,
                             botocore_session: Any) -> None:
    arn = new_key_arn(kms)
    plaintext = os.urandom(1024 * 1024)

    sealed = io.BytesIO()
    with esdk.stream(mode="e", source=io.BytesIO(plaintext), encryption_context=CONTEXT,
                     key_provider=strict(botocore_session, arn), frame_length=64 * 1024) as enc:
        for chunk in enc:
            sealed.write(chunk)
        assert enc.header.algorithm == DEFAULT_SUITE
    assert len(sealed.getvalue()) > len(plaintext)

    opened = io.BytesIO()
    sealed.seek(0)
    with esdk.stream(mode="d", source=sealed, key_provider=strict(botocore_session, arn)) as dec:
        for chunk in dec:
            opened.write(chunk)
        assert dec.header.encryption_context["tenant"] == "acme"
    assert opened.getvalue() == plaintext


# -- algorithm suites ----------------------------------------------------------------------
def test_default_suite_is_committing_and_signed(kms: Any, esdk: EncryptionSDKClient,
                                                botocore_session: Any) -> None:
    arn = new_key_arn(kms)
    ciphertext, header = esdk.encrypt(source=b"committed", key_provider=strict(botocore_session,
                                                                               arn))
    assert header.algorithm == DEFAULT_SUITE
    assert header.algorithm.is_committing()
    decrypted, dec_header = esdk.decrypt(source=ciphertext,
                                         key_provider=strict(botocore_session, arn))
    assert decrypted == b"committed"
    assert dec_header.algorithm == DEFAULT_SUITE


@pytest.mark.parametrize("suite", [
    Algorithm.AES_256_GCM_HKDF_SHA512_COMMIT_KEY,  # committing, unsigned
    Algorithm.AES_256_GCM_IV12_TAG16_HKDF_SHA384_ECDSA_P384,  # legacy, 32-byte data key
    Algorithm.AES_128_GCM_IV12_TAG16_HKDF_SHA256,  # legacy, 16-byte data key
])
def test_other_suites_round_trip(kms: Any, botocore_session: Any, suite: Algorithm) -> None:
    policy = (CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT if suite.is_committing()
              else CommitmentPolicy.FORBID_ENCRYPT_ALLOW_DECRYPT)
    client = EncryptionSDKClient(commitment_policy=policy)
    arn = new_key_arn(kms)
    ciphertext, header = client.encrypt(source=b"suite", encryption_context=CONTEXT,
                                        algorithm=suite,
                                        key_provider=strict(botocore_session, arn))
    assert header.algorithm == suite
    decrypted, _ = client.decrypt(source=ciphertext, key_provider=strict(botocore_session, arn))
    assert decrypted == b"suite"


def test_committed_policy_refuses_a_legacy_message(kms: Any, esdk: EncryptionSDKClient,
                                                   botocore_session: Any) -> None:
    arn = new_key_arn(kms)
    legacy = EncryptionSDKClient(commitment_policy=CommitmentPolicy.FORBID_ENCRYPT_ALLOW_DECRYPT)
    ciphertext, _ = legacy.encrypt(source=b"legacy", key_provider=strict(botocore_session, arn))
    with pytest.raises(AWSEncryptionSDKClientError):
        esdk.decrypt(source=ciphertext, key_provider=strict(botocore_session, arn))


# -- keyrings (aws-encryption-sdk[mpl]: the Material Providers Library) ---------------------
def kms_keyring(kms: Any, arn: str) -> Any:
    mpl = pytest.importorskip("aws_cryptographic_material_providers.mpl")
    from aws_cryptographic_material_providers.mpl.config import MaterialProvidersConfig
    from aws_cryptographic_material_providers.mpl.models import CreateAwsKmsKeyringInput

    providers = mpl.AwsCryptographicMaterialProviders(config=MaterialProvidersConfig())
    return providers.create_aws_kms_keyring(
        input=CreateAwsKmsKeyringInput(kms_key_id=arn, kms_client=kms))


def test_kms_keyring_round_trip_and_interop(kms: Any, esdk: EncryptionSDKClient,
                                            botocore_session: Any) -> None:
    arn = new_key_arn(kms)
    keyring = kms_keyring(kms, arn)

    ciphertext, header = esdk.encrypt(source=b"keyring", encryption_context=CONTEXT,
                                      keyring=keyring)
    assert header.algorithm == DEFAULT_SUITE
    decrypted, _ = esdk.decrypt(source=ciphertext, keyring=keyring, encryption_context=CONTEXT)
    assert decrypted == b"keyring"
    with pytest.raises(AWSEncryptionSDKClientError, match="does not match"):
        esdk.decrypt(source=ciphertext, keyring=keyring,
                     encryption_context={**CONTEXT, "tenant": "other"})

    # Messages are the same format either way: a master key provider opens a keyring's message.
    decrypted, _ = esdk.decrypt(source=ciphertext, key_provider=strict(botocore_session, arn))
    assert decrypted == b"keyring"
