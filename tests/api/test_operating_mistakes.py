"""Operating mistakes at ``kms serve`` are refused before they can corrupt or mislead.

A second node on a held data dir, the wrong region or account, a missing or wrong root key,
a port in use or a malformed setting: each is one ``kms: error:`` line and exit status 2,
and the data dir (and any node already serving it) is left as it was.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from tests.conftest import client_for
from tests.support.server import ServerProcess, free_port

pytestmark = pytest.mark.slow


def serve(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``kms serve`` expecting it to refuse and exit by itself."""
    environ = {k: v for k, v in os.environ.items() if k != "KMS_ROOT_KEY"}
    return subprocess.run([sys.executable, "-m", "kms.cli", "serve", *argv], capture_output=True,
                          text=True, timeout=60, env={**environ, **(env or {})})


def refused(done: subprocess.CompletedProcess[str], *fragments: str) -> str:
    """The refusal is exit 2 and exactly one ``kms: error:`` line naming ``fragments``."""
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("kms: error: ")
    for fragment in fragments:
        assert fragment in lines[0]
    assert "serving" not in done.stdout
    return lines[0]


def new_key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def populated(data_dir: Path, **kwargs: object) -> str:
    """Start a dev node on ``data_dir``, create one key, stop it; the key's id."""
    node = ServerProcess(data_dir, **kwargs).start()  # type: ignore[arg-type]
    try:
        return str(client_for(node.url).create_key()["KeyMetadata"]["KeyId"])
    finally:
        node.stop()


def still_serves(data_dir: Path, key_id: str, **kwargs: object) -> None:
    node = ServerProcess(data_dir, **kwargs).start()  # type: ignore[arg-type]
    try:
        kms = client_for(node.url)
        assert kms.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"] == "Enabled"
        blob = kms.encrypt(KeyId=key_id, Plaintext=b"still here")["CiphertextBlob"]
        assert kms.decrypt(CiphertextBlob=blob)["Plaintext"] == b"still here"
    finally:
        node.stop()


# -- one process per data dir ------------------------------------------------------------------
def test_a_second_node_on_a_held_data_dir_is_refused_and_the_first_keeps_writing(
        tmp_path: Path) -> None:
    data_dir = tmp_path / "d"
    first = ServerProcess(data_dir).start()
    try:
        assert first.proc is not None
        kms = client_for(first.url)
        before = kms.create_key()["KeyMetadata"]["KeyId"]
        done = serve("--data-dir", str(data_dir), "--port", str(free_port()), "--dev")
        refused(done, f"data dir {data_dir} is in use by another kms process "
                      f"(pid {first.proc.pid})")
        after = kms.create_key(Description="after the refusal")["KeyMetadata"]["KeyId"]
        kms.create_alias(AliasName="alias/after", TargetKeyId=after)
        assert sorted(k["KeyId"] for k in kms.list_keys()["Keys"]) == sorted([before, after])
        assert first.health()["status"] == "ok"
    finally:
        first.stop()
    still_serves(data_dir, after)  # the lock went with the process that held it


# -- one region and account per data dir ------------------------------------------------------
@pytest.mark.parametrize(("flags", "theirs", "ours"), [
    (["--region", "ap-south-1"], "region us-east-1, account 111122223333",
     "region ap-south-1, account 111122223333"),
    (["--account-id", "444455556666"], "region us-east-1, account 111122223333",
     "region us-east-1, account 444455556666"),
], ids=["other-region", "other-account"])
def test_a_data_dir_serves_only_its_region_and_account(tmp_path: Path, flags: list[str],
                                                        theirs: str, ours: str) -> None:
    data_dir = tmp_path / "d"
    key_id = populated(data_dir)
    identity = (data_dir / "node.json").read_bytes()
    done = serve("--data-dir", str(data_dir), "--port", str(free_port()), "--dev", *flags)
    refused(done, str(data_dir), f"belongs to {theirs}", f"as {ours}")
    assert (data_dir / "node.json").read_bytes() == identity
    still_serves(data_dir, key_id)


# -- the root key -----------------------------------------------------------------------------
def test_a_deleted_root_key_is_refused_not_replaced(tmp_path: Path) -> None:
    data_dir = tmp_path / "d"
    key_id = populated(data_dir)
    saved = (data_dir / "root.key").read_bytes()
    (data_dir / "root.key").unlink()
    done = serve("--data-dir", str(data_dir), "--port", str(free_port()), "--dev")
    refused(done, str(data_dir), "holds keys sealed under a root key", "KMS_ROOT_KEY",
            str(data_dir / "root.key"))
    assert not (data_dir / "root.key").exists()  # no fresh key minted beside the old keys
    (data_dir / "root.key").write_bytes(saved)
    (data_dir / "root.key").chmod(0o600)
    still_serves(data_dir, key_id)


def test_a_data_dir_with_events_never_gets_a_fresh_root_key(tmp_path: Path) -> None:
    """A log with rows but none of the guard files (a dir from before them): still refused."""
    data_dir = tmp_path / "d"
    populated(data_dir)
    for name in ("root.key", "root-check", "node.json"):
        (data_dir / name).unlink()
    done = serve("--data-dir", str(data_dir), "--port", str(free_port()), "--dev")
    refused(done, "holds keys sealed under a root key")
    assert not (data_dir / "root.key").exists()


@pytest.mark.parametrize("first_from_env", [True, False], ids=["env-then-env", "file-then-env"])
def test_a_different_root_key_is_refused(tmp_path: Path, first_from_env: bool) -> None:
    data_dir = tmp_path / "d"
    original = new_key()
    env = {"KMS_ROOT_KEY": original} if first_from_env else None
    key_id = populated(data_dir, env=env)
    done = serve("--data-dir", str(data_dir), "--port", str(free_port()), "--dev",
                 env={"KMS_ROOT_KEY": new_key()})
    refused(done, "the root key from KMS_ROOT_KEY is not the one data dir "
                  f"{data_dir} was sealed with")
    still_serves(data_dir, key_id, env=env)


# -- a data dir from before node.json and root-check ------------------------------------------
def old_data_dir(data_dir: Path, root_key: str) -> tuple[str, bytes]:
    """A data dir as a node from before the guards left it: a key in the log and vault, an
    old ciphertext under it, and no ``root-check`` or ``node.json``. The key id and the blob."""
    node = ServerProcess(data_dir, env={"KMS_ROOT_KEY": root_key}).start()
    try:
        kms = client_for(node.url)
        key_id = str(kms.create_key()["KeyMetadata"]["KeyId"])
        blob = kms.encrypt(KeyId=key_id, Plaintext=b"sealed before the upgrade")["CiphertextBlob"]
    finally:
        node.stop()
    for name in ("root-check", "node.json"):
        (data_dir / name).unlink()
    return key_id, blob


def test_an_old_data_dir_refuses_a_wrong_root_key_on_its_first_start(tmp_path: Path) -> None:
    """The first start after the upgrade checks the root key against the vault before it
    records it: a wrong key is refused, not sealed into root-check for good."""
    data_dir = tmp_path / "d"
    original = new_key()
    key_id, blob = old_data_dir(data_dir, original)
    done = serve("--data-dir", str(data_dir), "--port", str(free_port()), "--dev",
                 env={"KMS_ROOT_KEY": new_key()})
    refused(done, "the root key from KMS_ROOT_KEY is not the one data dir "
                  f"{data_dir} was sealed with", "start with the original root key")
    assert not (data_dir / "root-check").exists()
    assert not (data_dir / "node.json").exists()

    node = ServerProcess(data_dir, env={"KMS_ROOT_KEY": original}).start()
    try:
        kms = client_for(node.url)
        answer = kms.decrypt(CiphertextBlob=blob)
        assert answer["Plaintext"] == b"sealed before the upgrade"
        assert answer["KeyId"].endswith(f":key/{key_id}")
    finally:
        node.stop()
    assert json.loads((data_dir / "node.json").read_text()) == {
        "region": "us-east-1", "account_id": "111122223333"}
    # What was recorded is the right key: a wrong one is still refused, the right one serves.
    done = serve("--data-dir", str(data_dir), "--port", str(free_port()), "--dev",
                 env={"KMS_ROOT_KEY": new_key()})
    refused(done, f"{data_dir / 'root-check'} does not open under it")
    # node.json lost again (root-check kept): the log still names the region.
    (data_dir / "node.json").unlink()
    done = serve("--data-dir", str(data_dir), "--port", str(free_port()), "--dev",
                 "--region", "eu-west-1", env={"KMS_ROOT_KEY": original})
    refused(done, "belongs to region us-east-1", "as region eu-west-1")
    assert not (data_dir / "node.json").exists()
    still_serves(data_dir, key_id, env={"KMS_ROOT_KEY": original})


@pytest.mark.parametrize(("flags", "ours"), [
    (["--region", "ap-south-1"], "region ap-south-1, account 111122223333"),
    (["--account-id", "444455556666"], "region us-east-1, account 444455556666"),
], ids=["other-region", "other-account"])
def test_an_old_data_dir_serves_only_the_region_and_account_its_log_names(
        tmp_path: Path, flags: list[str], ours: str) -> None:
    data_dir = tmp_path / "d"
    original = new_key()
    key_id, _ = old_data_dir(data_dir, original)
    done = serve("--data-dir", str(data_dir), "--port", str(free_port()), "--dev", *flags,
                 env={"KMS_ROOT_KEY": original})
    refused(done, str(data_dir), "belongs to region us-east-1, account 111122223333",
            f"refusing to serve it as {ours}")
    assert not (data_dir / "node.json").exists()
    assert not (data_dir / "root-check").exists()
    still_serves(data_dir, key_id, env={"KMS_ROOT_KEY": original})
    assert json.loads((data_dir / "node.json").read_text()) == {
        "region": "us-east-1", "account_id": "111122223333"}


@pytest.mark.parametrize(("value", "message"), [
    ("abc", "the root key in KMS_ROOT_KEY is not valid base64"),
    ("not base64!", "the root key in KMS_ROOT_KEY is not valid base64"),
    (base64.b64encode(b"k" * 16).decode(),
     "the root key in KMS_ROOT_KEY decodes to 16 bytes; a root key is 32 bytes"),
], ids=["bad-padding", "not-base64", "16-bytes"])
def test_a_malformed_kms_root_key_says_what_is_wrong(tmp_path: Path, value: str,
                                                     message: str) -> None:
    data_dir = tmp_path / "d"
    done = serve("--data-dir", str(data_dir), "--port", str(free_port()),
                 env={"KMS_ROOT_KEY": value})
    line = refused(done, message)
    assert "Incorrect padding" not in line and value not in line  # never echo a key
    assert not data_dir.exists()


def test_a_fresh_data_dir_starts_with_no_configuration(tmp_path: Path) -> None:
    data_dir = tmp_path / "fresh"
    assert "KMS_ROOT_KEY" not in os.environ
    node = ServerProcess(data_dir, dev=False).start()
    try:
        cred = json.loads((data_dir / "credentials.json").read_text())["credentials"][0]
        kms = client_for(node.url, access_key=cred["access_key_id"],
                         secret=cred["secret_access_key"])
        key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    finally:
        node.stop()
    out = node.read_stdout()
    assert f"stored in {data_dir / 'credentials.json'}" in out
    assert cred["secret_access_key"] in out
    assert json.loads((data_dir / "node.json").read_text()) == {
        "region": "us-east-1", "account_id": "111122223333"}
    assert {"root.key", "root-check", "kms.lock"} <= {p.name for p in data_dir.iterdir()}

    again = ServerProcess(data_dir, dev=False, port=node.port).start()
    try:
        kms = client_for(again.url, access_key=cred["access_key_id"],
                         secret=cred["secret_access_key"])
        assert kms.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"] == "Enabled"
    finally:
        again.stop()
    assert "Created the account root credential" not in again.read_stdout()  # shown once


# -- the port and the settings, before anything is created ------------------------------------
def test_a_port_in_use_is_refused_before_anything_is_created(tmp_path: Path) -> None:
    data_dir = tmp_path / "d"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = serve("--host", "127.0.0.1", "--port", str(port), "--data-dir", str(data_dir))
    refused(done, f"cannot listen on 127.0.0.1:{port}: address already in use")
    assert "Traceback" not in done.stderr
    assert not data_dir.exists()


@pytest.mark.parametrize(("flags", "message"), [
    (["--port", "70000"], "port 70000 is out of range (0-65535)"),
    (["--port", "-1"], "port -1 is out of range (0-65535)"),
    (["--region", "US_EAST"], "region 'US_EAST' is not a region name like us-east-1"),
    (["--region", "useast1"], "region 'useast1' is not a region name like us-east-1"),
    (["--account-id", "12345"], "account id '12345' is not 12 digits"),
    (["--account-id", "11112222333x"], "account id '11112222333x' is not 12 digits"),
], ids=["port-70000", "port-minus-1", "region-upper", "region-shape", "account-short",
        "account-letter"])
def test_a_malformed_setting_is_one_line_and_creates_nothing(tmp_path: Path, flags: list[str],
                                                             message: str) -> None:
    data_dir = tmp_path / "d"
    done = serve("--data-dir", str(data_dir), *(["--port", str(free_port())]
                                                if "--port" not in flags else []), *flags)
    refused(done, f"configuration: {message}")
    assert "Traceback" not in done.stderr
    assert not data_dir.exists()


# -- kms --version ----------------------------------------------------------------------------
def test_version_prints_the_distribution_version() -> None:
    done = subprocess.run([sys.executable, "-m", "kms.cli", "--version"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0
    assert done.stdout == f"kms {metadata.version('kms-selfhosted')}\n"
