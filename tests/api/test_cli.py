"""The real AWS CLI (v1) against a real dev node, as a subprocess.

The CLI starts slowly, so independent calls of one step run side by side (``aws_all``)
and each test walks through several operations.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.server import ServerProcess

pytestmark = pytest.mark.slow

REGION = "us-east-1"
ACCOUNT = "111122223333"
_ENV: dict[str, str] = {}

Result = tuple[int, Any, str]


@pytest.fixture(scope="module", autouse=True)
def aws_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """An AWS CLI environment that reads nothing from the host's own configuration."""
    home = tmp_path_factory.mktemp("aws-home")
    (home / "config").write_text("")
    (home / "credentials").write_text("")
    _ENV.update({
        **{k: v for k, v in os.environ.items() if not k.startswith("AWS_")},
        "HOME": str(home),
        "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE",
        "AWS_SECRET_ACCESS_KEY": "dummy-secret",
        "AWS_CONFIG_FILE": str(home / "config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(home / "credentials"),
        "AWS_PAGER": "",
        "AWS_MAX_ATTEMPTS": "1",
    })
    yield
    _ENV.clear()


def _argv(server: ServerProcess, args: tuple[str, ...]) -> list[str]:
    output = [] if "--output" in args else ["--output", "json"]
    return ["aws", "--endpoint-url", server.url, "--region", REGION, "kms", *args, *output]


def _result(proc: subprocess.Popen[str]) -> Result:
    out, err = proc.communicate(timeout=60)
    parsed: Any = None
    if out.strip():
        try:
            parsed = json.loads(out)
        except ValueError:
            parsed = out.strip()  # --output text
    return proc.returncode, parsed, err


def aws(server: ServerProcess, *args: str) -> Result:
    """Run ``aws kms <args>``: (exit code, parsed JSON -- or the text for --output text, stderr)."""
    return aws_all(server, args)[0]


def aws_all(server: ServerProcess, *calls: tuple[str, ...]) -> list[Result]:
    """Run several independent ``aws kms`` calls at once; results in the order given."""
    procs = [subprocess.Popen(_argv(server, c), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=_ENV) for c in calls]
    return [_result(p) for p in procs]


def ok(result: Result) -> Any:
    code, parsed, err = result
    assert code == 0, err
    return parsed


def failed(result: Result, code: str, operation: str) -> str:
    """Assert the CLI failed with AWS error ``code`` for ``operation``; return stderr."""
    rc, parsed, err = result
    assert rc != 0 and rc in (254, 255), (rc, parsed, err)
    assert parsed is None
    assert f"An error occurred ({code}) when calling the {operation} operation" in err, err
    assert "Traceback" not in err
    return err


def blob(tmp_path: Path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return f"fileb://{path}"


def test_key_lifecycle_description_and_tags(server: ServerProcess, tmp_path: Path) -> None:
    created = ok(aws(server, "create-key", "--description", "first key",
                     "--tags", "TagKey=team,TagValue=payments", "TagKey=env,TagValue=test"))
    meta = created["KeyMetadata"]
    key_id = meta["KeyId"]
    assert meta["Arn"] == f"arn:aws:kms:{REGION}:{ACCOUNT}:key/{key_id}"
    assert meta["Description"] == "first key"
    assert (meta["KeyState"], meta["Enabled"]) == ("Enabled", True)
    assert (meta["KeySpec"], meta["KeyUsage"]) == ("SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT")
    missing = str(uuid.uuid4())

    described, listed, tags, not_found = aws_all(
        server,
        ("describe-key", "--key-id", meta["Arn"]),
        ("list-keys",),
        ("list-resource-tags", "--key-id", key_id),
        ("describe-key", "--key-id", missing),
    )
    assert ok(described)["KeyMetadata"] == meta
    assert ok(listed)["Keys"] == [{"KeyId": key_id, "KeyArn": meta["Arn"]}]
    assert ok(tags)["Tags"] == [{"TagKey": "env", "TagValue": "test"},
                                {"TagKey": "team", "TagValue": "payments"}]
    err = failed(not_found, "NotFoundException", "DescribeKey")
    assert missing in err

    disabled, described_again, tagged, untagged = aws_all(
        server,
        ("disable-key", "--key-id", key_id),
        ("update-key-description", "--key-id", key_id, "--description", "renamed"),
        ("tag-resource", "--key-id", key_id, "--tags", "TagKey=owner,TagValue=alice"),
        ("untag-resource", "--key-id", key_id, "--tag-keys", "env"),
    )
    for result in (disabled, described_again, tagged, untagged):
        assert ok(result) is None  # these operations answer with an empty body

    described, tags, refused = aws_all(
        server,
        ("describe-key", "--key-id", key_id),
        ("list-resource-tags", "--key-id", key_id),
        ("encrypt", "--key-id", key_id, "--plaintext", blob(tmp_path, "p", b"x")),
    )
    meta = ok(described)["KeyMetadata"]
    assert (meta["KeyState"], meta["Enabled"], meta["Description"]) == (
        "Disabled", False, "renamed")
    assert ok(tags)["Tags"] == [{"TagKey": "owner", "TagValue": "alice"},
                                {"TagKey": "team", "TagValue": "payments"}]
    failed(refused, "DisabledException", "Encrypt")

    assert ok(aws(server, "enable-key", "--key-id", key_id)) is None
    meta = ok(aws(server, "describe-key", "--key-id", key_id))["KeyMetadata"]
    assert (meta["KeyState"], meta["Enabled"]) == ("Enabled", True)


def test_encrypt_decrypt_reencrypt_and_data_keys(server: ServerProcess, tmp_path: Path) -> None:
    first, second = aws_all(server, ("create-key",), ("create-key",))
    k1 = ok(first)["KeyMetadata"]
    k2 = ok(second)["KeyMetadata"]
    secret = bytes(range(256)) + b"\x00 the CLI must not mangle binary \xff"
    plain = blob(tmp_path, "plain.bin", secret)

    encrypted, dk256, dk64, dk_no_plain, rnd = aws_all(
        server,
        ("encrypt", "--key-id", k1["KeyId"], "--plaintext", plain,
         "--encryption-context", "purpose=cli-test,tenant=42"),
        ("generate-data-key", "--key-id", k1["Arn"], "--key-spec", "AES_256"),
        ("generate-data-key", "--key-id", k1["KeyId"], "--number-of-bytes", "64"),
        ("generate-data-key-without-plaintext", "--key-id", k1["KeyId"], "--key-spec", "AES_128"),
        ("generate-random", "--number-of-bytes", "32"),
    )
    enc = ok(encrypted)
    assert enc["KeyId"] == k1["Arn"] and enc["EncryptionAlgorithm"] == "SYMMETRIC_DEFAULT"
    ciphertext = base64.b64decode(enc["CiphertextBlob"])
    assert secret not in ciphertext
    ct_file = blob(tmp_path, "ct.bin", ciphertext)

    dk = ok(dk256)
    assert dk["KeyId"] == k1["Arn"] and len(base64.b64decode(dk["Plaintext"])) == 32
    dk_ct_file = blob(tmp_path, "dk.bin", base64.b64decode(dk["CiphertextBlob"]))
    assert len(base64.b64decode(ok(dk64)["Plaintext"])) == 64
    no_plain = ok(dk_no_plain)
    assert "Plaintext" not in no_plain and no_plain["KeyId"] == k1["Arn"]
    no_plain_file = blob(tmp_path, "np.bin", base64.b64decode(no_plain["CiphertextBlob"]))
    assert len(base64.b64decode(ok(rnd)["Plaintext"])) == 32

    (decrypted, as_text, reencrypted, dk_opened, np_opened, wrong_context, wrong_key,
     both_sizes) = aws_all(
        server,
        ("decrypt", "--ciphertext-blob", ct_file,
         "--encryption-context", "tenant=42,purpose=cli-test"),
        ("decrypt", "--ciphertext-blob", ct_file, "--key-id", k1["KeyId"],
         "--encryption-context", "purpose=cli-test,tenant=42",
         "--query", "Plaintext", "--output", "text"),
        ("re-encrypt", "--ciphertext-blob", ct_file, "--destination-key-id", k2["KeyId"],
         "--source-encryption-context", "purpose=cli-test,tenant=42",
         "--destination-encryption-context", "stage=two"),
        ("decrypt", "--ciphertext-blob", dk_ct_file),
        ("decrypt", "--ciphertext-blob", no_plain_file),
        ("decrypt", "--ciphertext-blob", ct_file, "--encryption-context", "purpose=other"),
        ("decrypt", "--ciphertext-blob", ct_file, "--key-id", k2["KeyId"],
         "--encryption-context", "purpose=cli-test,tenant=42"),
        ("generate-data-key", "--key-id", k1["KeyId"], "--key-spec", "AES_256",
         "--number-of-bytes", "32"),
    )
    dec = ok(decrypted)
    assert base64.b64decode(dec["Plaintext"]) == secret
    assert dec["KeyId"] == k1["Arn"] and dec["EncryptionAlgorithm"] == "SYMMETRIC_DEFAULT"
    assert base64.b64decode(ok(as_text)) == secret  # --query Plaintext --output text
    re = ok(reencrypted)
    assert (re["SourceKeyId"], re["KeyId"]) == (k1["Arn"], k2["Arn"])
    assert ok(dk_opened)["Plaintext"] == dk["Plaintext"]
    assert len(base64.b64decode(ok(np_opened)["Plaintext"])) == 16
    failed(wrong_context, "InvalidCiphertextException", "Decrypt")
    failed(wrong_key, "IncorrectKeyException", "Decrypt")
    failed(both_sizes, "ValidationException", "GenerateDataKey")

    re_file = blob(tmp_path, "re.bin", base64.b64decode(re["CiphertextBlob"]))
    opened = aws(server, "decrypt", "--ciphertext-blob", re_file,
                 "--encryption-context", "stage=two", "--query", "Plaintext", "--output", "text")
    assert base64.b64decode(ok(opened)) == secret


def test_aliases(server: ServerProcess, tmp_path: Path) -> None:
    first, second = aws_all(server, ("create-key",), ("create-key",))
    k1 = ok(first)["KeyMetadata"]
    k2 = ok(second)["KeyMetadata"]
    alias_arn = f"arn:aws:kms:{REGION}:{ACCOUNT}:alias/cli-app"

    created, other = aws_all(
        server,
        ("create-alias", "--alias-name", "alias/cli-app", "--target-key-id", k1["KeyId"]),
        ("create-alias", "--alias-name", "alias/cli-other", "--target-key-id", k2["Arn"]),
    )
    assert ok(created) is None and ok(other) is None

    duplicate, of_k1, via_alias, encrypted = aws_all(
        server,
        ("create-alias", "--alias-name", "alias/cli-app", "--target-key-id", k2["KeyId"]),
        ("list-aliases", "--key-id", k1["KeyId"]),
        ("describe-key", "--key-id", "alias/cli-app"),
        ("encrypt", "--key-id", alias_arn, "--plaintext", blob(tmp_path, "p", b"via alias")),
    )
    err = failed(duplicate, "AlreadyExistsException", "CreateAlias")
    assert alias_arn in err
    entries = ok(of_k1)["Aliases"]
    assert [(a["AliasName"], a["AliasArn"], a["TargetKeyId"]) for a in entries] == [
        ("alias/cli-app", alias_arn, k1["KeyId"])]
    assert ok(via_alias)["KeyMetadata"]["KeyId"] == k1["KeyId"]
    assert ok(encrypted)["KeyId"] == k1["Arn"]

    assert ok(aws(server, "update-alias", "--alias-name", "alias/cli-app",
                  "--target-key-id", k2["KeyId"])) is None
    of_k1, of_k2, via_alias = aws_all(
        server,
        ("list-aliases", "--key-id", k1["KeyId"]),
        ("list-aliases", "--key-id", k2["Arn"]),
        ("describe-key", "--key-id", "alias/cli-app"),
    )
    assert ok(of_k1)["Aliases"] == []
    assert sorted(a["AliasName"] for a in ok(of_k2)["Aliases"]) == [
        "alias/cli-app", "alias/cli-other"]
    assert ok(via_alias)["KeyMetadata"]["KeyId"] == k2["KeyId"]

    assert ok(aws(server, "delete-alias", "--alias-name", "alias/cli-app")) is None
    gone, listed = aws_all(
        server,
        ("describe-key", "--key-id", "alias/cli-app"),
        ("list-aliases",),
    )
    failed(gone, "NotFoundException", "DescribeKey")
    # the predefined alias/aws/* names are listed too, without a target, as AWS lists them
    assert [a["AliasName"] for a in ok(listed)["Aliases"] if "TargetKeyId" in a] == [
        "alias/cli-other"]
    assert all(a["AliasName"].startswith("alias/aws/")
               for a in ok(listed)["Aliases"] if "TargetKeyId" not in a)


@pytest.mark.parametrize("variable", ["AWS_ENDPOINT_URL_KMS", "AWS_ENDPOINT_URL"])
def test_the_endpoint_can_come_from_the_environment(server: ServerProcess, variable: str) -> None:
    """As the README says: no --endpoint-url, only the environment names the node."""
    env = {**_ENV, variable: server.url, "AWS_DEFAULT_REGION": REGION}
    done = subprocess.run(["aws", "kms", "create-key", "--description", "via env",
                           "--output", "json"], capture_output=True, text=True, env=env,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    created = json.loads(done.stdout)["KeyMetadata"]
    assert created["Arn"].startswith(f"arn:aws:kms:{REGION}:{ACCOUNT}:key/")
    listed = ok(aws(server, "list-keys"))["Keys"]
    assert created["KeyId"] in [k["KeyId"] for k in listed]  # it reached this node
