"""Regions through ``kms serve``: the topology's refusals, every region a request is signed
for hosted in one ``--dev`` process, and forwarding to a peer's node."""

from __future__ import annotations

import fcntl
import http.client
import http.server
import json
import os
import sqlite3
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.conftest import ACCOUNT, client_for
from tests.support.expect import eventually
from tests.support.server import ServerProcess, free_port

pytestmark = pytest.mark.slow

REGIONS = ("us-east-1", "eu-west-1", "ap-southeast-2")
DAY = 86_400


def serve(*argv: str) -> subprocess.CompletedProcess[str]:
    """Run ``kms serve`` (the console script's module) expecting it to refuse and exit."""
    return subprocess.run([sys.executable, "-m", "regions.cli", "serve", *argv],
                          capture_output=True, text=True, timeout=60, env={**os.environ})


@pytest.mark.parametrize(("peer_args", "toml", "message"), [
    (["--peer", "eu-west-1"], "", "--peer 'eu-west-1': expected REGION=URL"),
    (["--peer", "us-east-1=http://127.0.0.1:9"], "", "us-east-1 is this node's own region"),
    (["--peer", "eu-west-1=http://127.0.0.1:9", "--peer", "eu-west-1=http://127.0.0.1:8"], "",
     "region eu-west-1 is named by another --peer"),
    (["--peer", "eu-west-1=ftp://127.0.0.1:9"], "", "is not http(s)://host[:port]"),
    ([], '[[peers]]\nregion = "eu-west-1"\nurl = "http://a:1"\n'
         '[[peers]]\nregion = "eu-west-1"\nurl = "http://b:1"\n',
     "[[peers]]: region eu-west-1 is named twice"),
])
def test_a_topology_mistake_exits_2_with_one_line_and_creates_nothing(
        tmp_path: Path, peer_args: list[str], toml: str, message: str) -> None:
    config = tmp_path / "kms.toml"
    config.write_text(toml)
    data_dir = tmp_path / "data"
    done = serve("--port", str(free_port()), "--region", "us-east-1", "--data-dir",
                 str(data_dir), "--config", str(config), *peer_args)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1 and message in done.stderr
    assert done.stderr.startswith("kms: error: configuration: ")
    assert not data_dir.exists()


# -- one --dev process hosts every region a request is signed for ----------------------------


@pytest.fixture
def dev_node(tmp_path: Path) -> Iterator[ServerProcess]:
    node = ServerProcess(tmp_path / "data", region="us-east-1").start()
    try:
        yield node
    finally:
        node.stop()


def clients(node: ServerProcess) -> dict[str, Any]:
    return {r: client_for(node.url, region=r) for r in REGIONS}


def error_of(call: Any, **params: Any) -> tuple[str, int]:
    with pytest.raises(ClientError) as info:
        call(**params)
    return (info.value.response["Error"]["Code"],
            info.value.response["ResponseMetadata"]["HTTPStatusCode"])


def listed(kms: Any) -> set[str]:
    return {k["KeyId"] for k in kms.list_keys()["Keys"]}


def test_each_region_has_its_own_keys_files_and_restart(dev_node: ServerProcess) -> None:
    kms = clients(dev_node)
    keys = {r: kms[r].create_key(Description=r)["KeyMetadata"] for r in REGIONS}
    for region, md in keys.items():
        assert md["Arn"] == f"arn:aws:kms:{region}:{ACCOUNT}:key/{md['KeyId']}"
        assert listed(kms[region]) == {md["KeyId"]}
        assert kms[region].describe_key(KeyId=md["KeyId"])["KeyMetadata"]["Arn"] == md["Arn"]
    eu_key = keys["eu-west-1"]["KeyId"]
    assert error_of(kms["us-east-1"].describe_key, KeyId=eu_key) == ("NotFoundException", 400)
    assert error_of(kms["us-east-1"].encrypt, KeyId=keys["eu-west-1"]["Arn"],
                    Plaintext=b"x") == ("NotFoundException", 400)
    assert sorted(dev_node.health()["regions"]) == sorted(REGIONS)  # type: ignore[arg-type]

    data = dev_node.data_dir
    assert (data / "events.sqlite3").is_file()  # the own region keeps the data dir itself
    assert json.loads((data / "node.json").read_text())["region"] == "us-east-1"
    assert sorted(p.name for p in (data / "regions").iterdir()) == ["ap-southeast-2",
                                                                    "eu-west-1"]
    for region in ("eu-west-1", "ap-southeast-2"):
        here = data / "regions" / region
        for name in ("events.sqlite3", "root.key", "root-check", "node.json", "kms.lock"):
            assert (here / name).is_file(), (region, name)
        assert json.loads((here / "node.json").read_text()) == {"region": region,
                                                                "account_id": ACCOUNT}
        assert (here / "root.key").read_bytes() != (data / "root.key").read_bytes()

    dev_node.stop()
    dev_node.start()
    health = dev_node.health()
    assert sorted(health["regions"]) == sorted(REGIONS)  # type: ignore[arg-type]
    assert health["region"] == "us-east-1"
    kms = clients(dev_node)
    for region, md in keys.items():
        assert listed(kms[region]) == {md["KeyId"]}
        blob = kms[region].encrypt(KeyId=md["KeyId"], Plaintext=b"hi")["CiphertextBlob"]
        assert kms[region].decrypt(CiphertextBlob=blob)["KeyId"] == md["Arn"]


def test_reset_wipes_every_region(dev_node: ServerProcess) -> None:
    kms = clients(dev_node)
    for region in REGIONS:
        kms[region].create_key()
    dev_node.reset()
    for region in REGIONS:
        assert listed(kms[region]) == set()
    assert sorted(dev_node.health()["regions"]) == sorted(REGIONS)  # type: ignore[arg-type]


def test_the_dev_clock_reaches_every_region(dev_node: ServerProcess) -> None:
    kms = clients(dev_node)
    doomed = kms["eu-west-1"].create_key()["KeyMetadata"]["KeyId"]
    kept = kms["ap-southeast-2"].create_key()["KeyMetadata"]["KeyId"]
    kms["eu-west-1"].schedule_key_deletion(KeyId=doomed, PendingWindowInDays=7)
    dev_node.post("/_kms/clock", {"advance_seconds": 8 * DAY})
    assert error_of(kms["eu-west-1"].describe_key, KeyId=doomed) == ("NotFoundException", 400)
    md = kms["ap-southeast-2"].describe_key(KeyId=kept)["KeyMetadata"]
    assert md["KeyState"] == "Enabled"
    # a region first used after the clock moved lives at the same time
    fresh = client_for(dev_node.url, region="sa-east-1").create_key()["KeyMetadata"]
    assert fresh["CreationDate"].timestamp() >= md["CreationDate"].timestamp() + 8 * DAY - 60


def test_without_dev_only_the_own_region_is_served(tmp_path: Path) -> None:
    node = ServerProcess(tmp_path / "data", dev=False).start()
    try:
        cred = json.loads((tmp_path / "data" / "credentials.json").read_text())["credentials"][0]
        eu = client_for(node.url, region="eu-west-1", access_key=cred["access_key_id"],
                        secret=cred["secret_access_key"])
        with pytest.raises(ClientError) as info:
            eu.list_keys()
        assert info.value.response["Error"]["Code"] == "InvalidSignatureException"
        assert "This node serves us-east-1, not 'eu-west-1'" in str(info.value)
        assert node.health()["regions"] == ["us-east-1"]
    finally:
        node.stop()
    assert not (tmp_path / "data" / "regions").exists()


# -- forwarding: a request signed for a peer's region goes to the peer -----------------------


class LoggedNode(ServerProcess):
    """A node whose log lines (stderr) are kept with what it prints, for read_stdout()."""

    def command(self) -> list[str]:
        args = super().command()
        assert args[1:3] == ["-m", "regions.cli"]
        return [args[0], "-c", "import os, sys; os.dup2(1, 2); from regions.cli import main; "
                "sys.exit(main(sys.argv[1:]))", *args[3:]]


def audit_facts(data_dir: Path) -> int:
    with sqlite3.connect(data_dir / "events.sqlite3") as db:
        return int(db.execute("SELECT COUNT(*) FROM events WHERE stream = 'audit'").fetchone()[0])


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """A (us-east-1, --dev, peer eu-west-1 = B) and B (eu-west-1, --dev)."""
    b = ServerProcess(tmp_path / "b", region="eu-west-1")
    a = LoggedNode(tmp_path / "a", region="us-east-1", extra=["--peer", f"eu-west-1={b.url}"])
    try:
        b.start()
        a.start()
        yield a, b
    finally:
        a.stop()
        b.stop()


def raw_post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str], Any]:
    req = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, dict(r.headers), json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), json.load(e)


def test_a_request_signed_for_a_peer_is_served_by_the_peer(
        pair: tuple[ServerProcess, ServerProcess]) -> None:
    a, b = pair
    via_a = client_for(a.url, region="eu-west-1")
    md = via_a.create_key(Description="made through A")["KeyMetadata"]
    assert md["Arn"].startswith("arn:aws:kms:eu-west-1:")
    direct = client_for(b.url, region="eu-west-1")
    assert listed(direct) == {md["KeyId"]}
    assert direct.describe_key(KeyId=md["KeyId"])["KeyMetadata"]["Arn"] == md["Arn"]
    assert listed(client_for(a.url, region="us-east-1")) == set()
    assert not (a.data_dir / "regions").exists()
    assert "eu-west-1" not in a.health()["regions"]  # type: ignore[operator]

    # the answer is relayed unchanged, errors too, and audited once: by B, which served it
    a_facts, b_facts = audit_facts(a.data_dir), audit_facts(b.data_dir)
    with pytest.raises(ClientError) as info:
        via_a.describe_key(KeyId="alias/missing")
    err = info.value.response
    assert err["Error"] == {"Code": "NotFoundException",
                            "Message": f"Alias arn:aws:kms:eu-west-1:{ACCOUNT}:alias/missing "
                                       "is not found."}
    assert err["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert (audit_facts(a.data_dir), audit_facts(b.data_dir)) == (a_facts, b_facts + 1)
    a.stop()
    rid = err["ResponseMetadata"]["RequestId"]
    assert any('"forwarded"' in line and rid in line for line in a.read_stdout().splitlines())


def test_an_unreachable_peer_is_a_503(pair: tuple[ServerProcess, ServerProcess]) -> None:
    a, b = pair
    b.stop()
    via_a = client_for(a.url, region="eu-west-1")
    with pytest.raises(ClientError) as info:
        via_a.list_keys()
    err = info.value.response
    assert err["ResponseMetadata"]["HTTPStatusCode"] == 503
    assert err["Error"]["Code"] == "KMSInternalException"
    assert err["Error"]["Message"] == f"Region eu-west-1 ({b.url}) is not reachable."
    assert listed(client_for(a.url, region="us-east-1")) == set()  # A itself still serves
    a.stop()
    assert any('"peer_unreachable"' in line and "eu-west-1" in line
               for line in a.read_stdout().splitlines())


def test_a_forwarding_loop_is_refused_not_followed(tmp_path: Path) -> None:
    """A topology mistake: A and B each name the other as eu-west-1's node."""
    a_port, b_port = free_port(), free_port()
    a = ServerProcess(tmp_path / "a", region="us-east-1", port=a_port,
                      extra=["--peer", f"eu-west-1=http://127.0.0.1:{b_port}"])
    b = ServerProcess(tmp_path / "b", region="ap-southeast-2", port=b_port,
                      extra=["--peer", f"eu-west-1=http://127.0.0.1:{a_port}"])
    try:
        a.start()
        b.start()
        with pytest.raises(ClientError) as info:
            client_for(a.url, region="eu-west-1").list_keys()
        err = info.value.response
        assert err["ResponseMetadata"]["HTTPStatusCode"] == 508
        assert err["Error"]["Code"] == "KMSInternalException"
        assert "would be forwarded again" in err["Error"]["Message"]
    finally:
        a.stop()
        b.stop()


def test_a_region_dir_that_is_not_its_region_is_refused_at_start(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    node = ServerProcess(data_dir).start()
    try:
        client_for(node.url, region="eu-west-1").create_key()
    finally:
        node.stop()
    eu = data_dir / "regions" / "eu-west-1"
    (eu / "node.json").write_text(json.dumps({"region": "eu-central-1",
                                              "account_id": ACCOUNT}))
    done = serve("--port", str(free_port()), "--data-dir", str(data_dir), "--dev")
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr == (f"kms: error: data dir {eu} belongs to region eu-central-1, "
                           f"account {ACCOUNT}; refusing to serve it as region eu-west-1, "
                           f"account {ACCOUNT}\n")


class RecordingPeer:
    """A stand-in peer node on a loopback port that keeps the headers of each request it
    gets and answers an empty AWS JSON body (a real node would refuse the fake signature)."""

    def __init__(self) -> None:
        self.seen: list[dict[str, str]] = []
        peer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802  (http.server's name)
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                peer.seen.append({k.lower(): v for k, v in self.headers.items()})
                body = b"{}"
                self.send_response(200)
                self.send_header("Content-Type", "application/x-amz-json-1.1")
                self.send_header("x-amzn-RequestId", "peer-request")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> RecordingPeer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


def test_headers_the_connection_header_names_are_not_forwarded(tmp_path: Path) -> None:
    """RFC 9110 §7.6.1: a proxy drops the headers ``Connection`` names, not only the fixed
    hop-by-hop ones; the rest (signature included) reaches the peer as sent."""
    with RecordingPeer() as peer:
        a = ServerProcess(tmp_path / "a", region="us-east-1",
                          extra=["--peer", f"eu-west-1={peer.url}"]).start()
        try:
            conn = http.client.HTTPConnection("127.0.0.1", a.port, timeout=30)
            try:
                conn.putrequest("POST", "/", skip_accept_encoding=True)
                for name, value in (
                        ("Content-Type", "application/x-amz-json-1.1"),
                        ("X-Amz-Target", "TrentService.ListKeys"),
                        ("Authorization", "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20250101/"
                                          "eu-west-1/kms/aws4_request, SignedHeaders=host, "
                                          "Signature=00"),
                        ("Connection", "keep-alive, X-Secret"),
                        ("X-Secret", "1"), ("X-Kept", "2"), ("Content-Length", "2")):
                    conn.putheader(name, value)
                conn.endheaders(b"{}")
                reply = conn.getresponse()
                assert (reply.status, reply.read()) == (200, b"{}")
            finally:
                conn.close()
        finally:
            a.stop()
    assert len(peer.seen) == 1
    got = peer.seen[0]
    assert "x-secret" not in got
    assert got["x-kept"] == "2"
    assert got["x-amz-target"] == "TrentService.ListKeys"
    assert "Credential=AKIDEXAMPLE/20250101/eu-west-1/" in got["authorization"]


# -- which regions a --dev node hosts, and how it fails ----------------------------------------


def signed_for(region: str, target: str, body: bytes = b"{}") -> dict[str, str]:
    """Headers of a raw call scoped to ``region`` (--dev checks no signature)."""
    return {"Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": target,
            "Authorization": f"AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20250101/{region}/kms/"
                             "aws4_request, SignedHeaders=host;x-amz-date, Signature=00",
            "X-Amz-Date": "20250101T000000Z"}


def state_events(data_dir: Path) -> int:
    with closing(sqlite3.connect(data_dir / "events.sqlite3")) as db:
        return int(db.execute("SELECT COUNT(*) FROM events WHERE stream != 'audit'"
                              ).fetchone()[0])


def health_of(node: ServerProcess) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(node.url + "/_kms/health", timeout=10) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


@pytest.mark.parametrize("region", ["zz-bogus-1", "xx-north-99", "us-east-17"])
def test_a_region_aws_does_not_have_is_refused_and_creates_nothing(
        dev_node: ServerProcess, region: str) -> None:
    with pytest.raises(ClientError) as info:
        client_for(dev_node.url, region=region).create_key()
    err = info.value.response
    assert err["Error"]["Code"] == "InvalidSignatureException"
    assert err["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert err["Error"]["Message"] == (
        "Credential should be scoped to a valid region. This node serves us-east-1, "
        f"not '{region}'.")
    assert not (dev_node.data_dir / "regions").exists()
    assert dev_node.health()["regions"] == ["us-east-1"]
    assert state_events(dev_node.data_dir) == 0  # only the refused call's audit fact
    assert audit_facts(dev_node.data_dir) == 1


def test_a_call_that_does_not_parse_opens_no_region(dev_node: ServerProcess) -> None:
    """A region is opened for a known operation only: an unknown target, or a body that is
    not JSON, signed for a real region, is refused by the own node and creates nothing."""
    cases = [("TrentService.NoSuchOperation", b"{}", "UnknownOperationException"),
             ("Nonsense", b"{}", "UnknownOperationException"),
             ("TrentService.ListKeys", b"{not json", "SerializationException")]
    for target, body, code in cases:
        status, _, doc = raw_post(dev_node.url + "/", body, signed_for("eu-west-1", target))
        assert (status, doc["__type"]) == (400, code), doc
    assert not (dev_node.data_dir / "regions").exists()
    assert dev_node.health()["regions"] == ["us-east-1"]
    assert state_events(dev_node.data_dir) == 0
    # ... while a call that parses opens it
    status, _, doc = raw_post(dev_node.url + "/", b"{}",
                              signed_for("eu-west-1", "TrentService.ListKeys"))
    assert (status, doc["Keys"]) == (200, [])
    assert (dev_node.data_dir / "regions" / "eu-west-1" / "events.sqlite3").is_file()


def test_regions_past_max_dev_regions_are_refused(tmp_path: Path) -> None:
    config = tmp_path / "kms.toml"
    config.write_text("[node]\nmax_dev_regions = 2\n")
    node = ServerProcess(tmp_path / "data", extra=["--config", str(config)]).start()
    try:
        client_for(node.url, region="eu-west-1").create_key()
        with pytest.raises(ClientError) as info:
            client_for(node.url, region="ap-southeast-2").create_key()
        err = info.value.response
        assert err["Error"]["Code"] == "LimitExceededException"
        assert err["ResponseMetadata"]["HTTPStatusCode"] == 400
        assert err["Error"]["Message"] == ("This --dev node hosts 2 regions, its "
                                           "max_dev_regions; region ap-southeast-2 is not "
                                           "opened.")
        assert sorted(p.name for p in (node.data_dir / "regions").iterdir()) == ["eu-west-1"]
        assert node.health()["regions"] == ["us-east-1", "eu-west-1"]
    finally:
        node.stop()


def test_a_region_that_fails_to_open_is_released_and_refused_without_retrying(
        tmp_path: Path) -> None:
    """The node starts, then its identity cannot be read: it is stopped again, its dir lock
    let go, and later requests get the same answer without another attempt."""
    node = LoggedNode(tmp_path / "data", region="us-east-1").start()
    eu = node.data_dir / "regions" / "eu-west-1"
    try:
        eu.mkdir(parents=True)
        (eu / "region-identity.key").write_text("not a sealed identity!")
        eu_kms = client_for(node.url, region="eu-west-1")
        for _ in range(3):
            with pytest.raises(ClientError) as info:
                eu_kms.list_keys()
            err = info.value.response
            assert err["Error"] == {"Code": "KMSInternalException",
                                    "Message": "Region eu-west-1 cannot be opened by this node."}
            assert err["ResponseMetadata"]["HTTPStatusCode"] == 500
        with open(eu / "kms.lock", "rb+") as held:  # nobody holds the dir any more
            fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(held, fcntl.LOCK_UN)
        status, doc = health_of(node)
        assert (status, doc["regions"]) == (200, ["us-east-1"])
        assert listed(client_for(node.url)) == set()  # the own region still serves
    finally:
        node.stop()
    lines = [json.loads(line) for line in node.read_stdout().splitlines()
             if line.startswith("{")]
    refused = [d for d in lines if d.get("event") == "region_not_opened"]
    assert len(refused) == 1 and refused[0]["region"] == "eu-west-1"
    assert "not a sealed region identity" in refused[0]["error"]


def test_health_reports_each_hosted_region_and_fails_when_one_is_degraded(
        dev_node: ServerProcess) -> None:
    eu = client_for(dev_node.url, region="eu-west-1")
    eu.create_key()
    status, doc = health_of(dev_node)
    assert status == 200 and doc["status"] == "ok"
    assert doc["regions"] == ["us-east-1", "eu-west-1"]
    assert doc["region_status"]["us-east-1"] == {"status": "ok", "log_seq": doc["log_seq"],
                                                 "failed_commits": 0}
    assert doc["region_status"]["eu-west-1"]["status"] == "ok"
    assert doc["region_status"]["eu-west-1"]["log_seq"] >= 2
    # Another process holds eu-west-1's write lock past the busy timeout: its commit fails
    # and, while the lock is held, health says so although us-east-1 is fine.
    with closing(sqlite3.connect(dev_node.data_dir / "regions" / "eu-west-1" /
                                 "events.sqlite3", isolation_level=None)) as other:
        other.execute("BEGIN EXCLUSIVE")
        try:
            with pytest.raises(ClientError) as info:
                eu.create_key(Description="never written")
            assert info.value.response["Error"]["Code"] == "KMSInternalException"
            status, doc = health_of(dev_node)
        finally:
            other.execute("ROLLBACK")
    assert status == 503 and doc["status"] == "degraded"
    assert doc["region"] == "us-east-1"
    assert doc["region_status"]["us-east-1"]["status"] == "ok"
    eu_status = doc["region_status"]["eu-west-1"]
    assert eu_status["status"] == "degraded" and eu_status["failed_commits"] >= 1
    # the lock is gone: the probe clears it
    status, doc = health_of(dev_node)
    assert (status, doc["status"], doc["region_status"]["eu-west-1"]["status"]) == (
        200, "ok", "ok")



def test_reset_while_replicating_leaves_every_region_empty_and_replication_working(
        dev_node: ServerProcess) -> None:
    """Reset stops the in-process pullers, wipes every region, then starts them again: a
    pull fetched before one region's wipe never lands in another after its wipe (where it
    would bring back a wiped key, or move a cursor past the new log's rows)."""
    kms = clients(dev_node)
    primary, replicas = REGIONS[-1], REGIONS[:-1]  # the primary's region is wiped last
    for attempt in range(8):
        key_id = kms[primary].create_key(MultiRegion=True)["KeyMetadata"]["KeyId"]
        for region in replicas:
            kms[primary].replicate_key(KeyId=key_id, ReplicaRegion=region)
        if attempt % 2:  # every other time, reset with the replication done
            for region in replicas:
                eventually(lambda r=region, k=key_id: kms[r].describe_key(KeyId=k)[
                    "KeyMetadata"]["KeyState"] == "Enabled",
                    f"attempt {attempt}: the replica in {region}")
        dev_node.reset()  # else while the replicas are still being made
        for region in REGIONS:
            assert listed(kms[region]) == set(), (attempt, region)
    key_id = kms[primary].create_key(MultiRegion=True)["KeyMetadata"]["KeyId"]
    for region in replicas:
        kms[primary].replicate_key(KeyId=key_id, ReplicaRegion=region)
        eventually(lambda r=region: kms[r].describe_key(KeyId=key_id)["KeyMetadata"][
            "KeyState"] == "Enabled", f"the replica in {region} after the resets")
    for region in REGIONS:  # nothing came back from before the resets
        assert listed(kms[region]) == {key_id}, region


def test_reset_is_refused_on_a_node_with_peers_and_wipes_nothing(tmp_path: Path) -> None:
    """A peered --dev node (compose.yaml runs three) cannot be wiped alone: its peers keep
    replication cursors into its log and replicas of its keys. The refusal says what to do
    instead, and the node keeps its keys."""
    peer_port = free_port()  # a peer that is not running: the refusal needs no contact
    node = ServerProcess(tmp_path / "data", region="us-east-1",
                         extra=["--peer", f"eu-west-1=http://127.0.0.1:{peer_port}"]).start()
    try:
        kms = client_for(node.url, region="us-east-1")
        key_id = kms.create_key()["KeyMetadata"]["KeyId"]
        req = urllib.request.Request(node.url + "/_kms/reset", data=b"{}", method="POST",
                                     headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(req, timeout=60)
        doc = json.load(refused.value)
        assert (refused.value.code, doc["__type"]) == (409, "UnsupportedOperationException")
        assert "has peers (eu-west-1)" in doc["message"]
        assert "python ops/cluster.py down, then up" in doc["message"]
        assert kms.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"] == "Enabled"
    finally:
        node.stop()
