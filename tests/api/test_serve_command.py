"""``kms serve``: the --config file, flags over the file, the root key, restarts."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import client_for
from tests.support.server import ServerProcess, free_port

pytestmark = pytest.mark.slow


class CommandNode(ServerProcess):
    """A node started with exactly ``kms serve <argv>`` (no flags of our own)."""

    def __init__(self, argv: list[str], *, data_dir: Path, port: int,
                 env: dict[str, str] | None = None) -> None:
        super().__init__(data_dir, dev=False, port=port, env=env)
        self.argv = argv

    def command(self) -> list[str]:
        return [sys.executable, "-m", "kms.cli", "serve", *self.argv]


def serve(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``kms serve`` expecting it to exit by itself (a refused configuration)."""
    return subprocess.run([sys.executable, "-m", "kms.cli", "serve", *argv], capture_output=True,
                          text=True, timeout=60, env={**os.environ, **(env or {})})


def post_status(url: str) -> int:
    req = urllib.request.Request(url, data=b"{}", method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


def stop_cleanly(node: ServerProcess) -> None:
    """SIGTERM, and the node must exit 0 (it drains its log first)."""
    proc = node.proc
    assert proc is not None
    node.stop()
    assert proc.returncode == 0


def write_toml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_config_file_is_honoured(tmp_path: Path) -> None:
    port, data_dir = free_port(), tmp_path / "from-file"
    config = write_toml(tmp_path / "kms.toml", f"""
# every setting of the [node] table
[node]
host = "127.0.0.1"
port = {port}
region = "eu-west-1"
account_id = "444455556666"
data_dir = {json.dumps(str(data_dir))}
dev = false
log_format = "json"
""")
    node = CommandNode(["--config", str(config)], data_dir=data_dir, port=port).start()
    try:
        assert node.health()["region"] == "eu-west-1"
        cred = json.loads((data_dir / "credentials.json").read_text())["credentials"][0]
        assert cred["principal_arn"] == "arn:aws:iam::444455556666:root"
        kms = client_for(node.url, region="eu-west-1", access_key=cred["access_key_id"],
                         secret=cred["secret_access_key"])
        meta = kms.create_key()["KeyMetadata"]
        assert meta["Arn"] == f"arn:aws:kms:eu-west-1:444455556666:key/{meta['KeyId']}"
        assert meta["AWSAccountId"] == "444455556666"
        assert post_status(node.url + "/_kms/reset") == 404  # dev = false
        assert (data_dir / "events.sqlite3").exists()
    finally:
        stop_cleanly(node)
    assert f"serving region eu-west-1 on http://127.0.0.1:{port}" in node.read_stdout()
    assert "(dev mode)" not in node.read_stdout()


def test_flags_override_the_file(tmp_path: Path) -> None:
    file_dir, flag_dir = tmp_path / "file-dir", tmp_path / "flag-dir"
    config = write_toml(tmp_path / "kms.toml", f"""
[node]
port = {free_port()}
region = "eu-west-1"
account_id = "444455556666"
data_dir = {json.dumps(str(file_dir))}
dev = true
""")
    node = ServerProcess(flag_dir, dev=False, region="ap-southeast-2",
                         extra=["--config", str(config), "--account-id", "777788889999"]).start()
    try:
        assert node.health()["region"] == "ap-southeast-2"  # --region and --port won
        # dev = true from the file still holds: no flag said otherwise.
        assert post_status(node.url + "/_kms/reset") == 200
        kms = client_for(node.url, region="ap-southeast-2")
        meta = kms.create_key()["KeyMetadata"]
        assert meta["Arn"] == f"arn:aws:kms:ap-southeast-2:777788889999:key/{meta['KeyId']}"
        assert (flag_dir / "events.sqlite3").exists()
        assert not file_dir.exists()
    finally:
        stop_cleanly(node)
    assert "serving region ap-southeast-2" in node.read_stdout()
    assert "(dev mode)" in node.read_stdout()


@pytest.mark.parametrize(("toml", "message"), [
    ('[node]\nregion = "eu-west-1"\ncolour = "blue"\n', "unknown settings in [node]: colour"),
    ('[node]\nregion = 5\n', "region must be a str"),
    ('[node]\nport = "eighty"\n', "port must be a int"),
    ("[node\nregion = 'x'\n", "not valid TOML"),
    (None, "No such file or directory"),
], ids=["unknown-setting", "wrong-type", "wrong-type-port", "bad-toml", "missing-file"])
def test_bad_configuration_fails_clearly(tmp_path: Path, toml: str | None, message: str) -> None:
    config = tmp_path / "kms.toml"
    if toml is not None:
        config.write_text(toml)
    data_dir = tmp_path / "d"
    done = serve("--config", str(config), "--data-dir", str(data_dir),
                 "--port", str(free_port()))
    assert done.returncode != 0
    assert message in done.stderr
    assert str(config) in done.stderr
    assert "Traceback" not in done.stderr
    assert "serving" not in done.stdout
    assert not data_dir.exists()  # nothing was started or created


def test_root_key_file_and_restart_keep_everything(tmp_path: Path) -> None:
    data_dir = tmp_path / "d"
    node = ServerProcess(data_dir).start()
    try:
        root_key = data_dir / "root.key"
        assert stat.S_IMODE(root_key.stat().st_mode) == 0o600
        assert len(base64.b64decode(root_key.read_bytes().strip(), validate=True)) == 32
        kms = client_for(node.url)
        meta = kms.create_key(Description="survives restarts")["KeyMetadata"]
        kms.create_alias(AliasName="alias/durable", TargetKeyId=meta["KeyId"])
        blob = kms.encrypt(KeyId="alias/durable", Plaintext=b"persisted",
                           EncryptionContext={"k": "v"})["CiphertextBlob"]
        kms.disable_key(KeyId=meta["KeyId"])
        kms.enable_key(KeyId=meta["KeyId"])
        kms.update_key_description(KeyId=meta["KeyId"], Description="renamed")
    finally:
        stop_cleanly(node)
    key_bytes = root_key.read_bytes()

    again = ServerProcess(data_dir, port=node.port).start()
    try:
        kms = client_for(again.url)
        described = kms.describe_key(KeyId="alias/durable")["KeyMetadata"]
        assert described["KeyId"] == meta["KeyId"]
        assert (described["KeyState"], described["Description"]) == ("Enabled", "renamed")
        assert described["CreationDate"] == meta["CreationDate"]
        out = kms.decrypt(CiphertextBlob=blob, EncryptionContext={"k": "v"})
        assert (out["Plaintext"], out["KeyId"]) == (b"persisted", meta["Arn"])
        assert [k["KeyId"] for k in kms.list_keys()["Keys"]] == [meta["KeyId"]]
    finally:
        stop_cleanly(again)
    assert root_key.read_bytes() == key_bytes  # reused, not replaced


def test_kms_root_key_env_is_used_instead_of_a_file(tmp_path: Path) -> None:
    data_dir = tmp_path / "d"
    key_a = base64.b64encode(os.urandom(32)).decode()
    key_b = base64.b64encode(os.urandom(32)).decode()

    node = ServerProcess(data_dir, env={"KMS_ROOT_KEY": key_a}).start()
    try:
        kms = client_for(node.url)
        key_id = kms.create_key()["KeyMetadata"]["KeyId"]
        blob = kms.encrypt(KeyId=key_id, Plaintext=b"under the env key")["CiphertextBlob"]
    finally:
        stop_cleanly(node)
    assert not (data_dir / "root.key").exists()

    # Another root key is refused at start (root-check), before it could fail every Decrypt.
    done = serve("--data-dir", str(data_dir), "--port", str(free_port()), "--dev",
                 env={"KMS_ROOT_KEY": key_b})
    assert done.returncode == 2
    assert "is not the one data dir" in done.stderr and "Traceback" not in done.stderr
    assert "serving" not in done.stdout

    same = ServerProcess(data_dir, env={"KMS_ROOT_KEY": key_a}).start()
    try:
        out = client_for(same.url).decrypt(CiphertextBlob=blob)
        assert out["Plaintext"] == b"under the env key"
    finally:
        stop_cleanly(same)
    assert not (data_dir / "root.key").exists()

    short = base64.b64encode(os.urandom(16)).decode()
    done = serve("--data-dir", str(data_dir), "--port", str(free_port()),
                 env={"KMS_ROOT_KEY": short})
    assert done.returncode != 0
    assert "32 bytes" in done.stderr and "Traceback" not in done.stderr
    assert "serving" not in done.stdout

