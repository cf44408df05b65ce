"""Peer authentication between secured region processes: a configured peer's signed reads
replicate; unsigned, badly signed, stale, replayed, unconfigured, forged and changed-key
requests are refused with 403 AccessDeniedException naming why, and append nothing."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kms.crypto import transport
from kms.crypto.sealing import RootKey
from regions import peer_auth
from regions.identity import RegionIdentity
from tests.conftest import client_for
from tests.support.expect import eventually
from tests.support.secured import ACCOUNT, ALICE, ALLOW_ALL
from tests.support.server import ServerProcess, free_port

US, EU, AP = "us-east-1", "eu-west-1", "ap-southeast-2"
CONFIG = f"""
account_id = "{ACCOUNT}"
[[principals]]
arn = "arn:aws:iam::{ACCOUNT}:user/alice"
access_key_id = "{ALICE[0]}"
secret_access_key = "{ALICE[1]}"
policies = ['{ALLOW_ALL}']
"""
FEED = f"/_kms/replication?origin={US}&after=0"
FEED_QUERY = {"origin": US, "after": "0"}


@dataclass
class Pair:
    us: ServerProcess
    eu: ServerProcess
    dead_ap: str  # where ap-southeast-2 is configured: nothing listens there


def get_json(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def identity_of(node: ServerProcess) -> RegionIdentity:
    """The region's identity, read from its data dir (the test stands in for the node)."""
    root = RootKey.load_or_create(node.data_dir, create=False)
    return RegionIdentity.load_or_create(node.data_dir, root)


def public_of(node: ServerProcess) -> bytes:
    status, info = get_json(node.url + "/_kms/region")
    assert status == 200
    return transport.public_from_text(info["identity_public_key"])


def signed(signer: RegionIdentity, server_public: bytes, region: str = EU,
           query: dict[str, str] | None = None, *, at: float | None = None,
           **headers: str) -> dict[str, str]:
    out = peer_auth.sign(signer, server_public, region, US, "GET", "/_kms/replication",
                         query or FEED_QUERY, now=time.time() if at is None else at)
    return {**out, **headers}


def peers_of(node: ServerProcess) -> Any:
    try:
        return node.health()["peers"]
    except OSError:
        return {}


def start_pair(tmp: Path, ap_url: str | None = None, *, dev: bool = False,
               ) -> tuple[ServerProcess, ServerProcess]:
    config = tmp / "kms.toml"
    config.write_text(CONFIG)
    us_port, eu_port = free_port(), free_port()
    ap = ["--peer", f"{AP}={ap_url}"] if ap_url else []
    us = ServerProcess(tmp / "us", dev=dev, region=US, port=us_port, log_path=tmp / "us.log",
                       extra=["--config", str(config),
                              "--peer", f"{EU}=http://127.0.0.1:{eu_port}", *ap])
    eu = ServerProcess(tmp / "eu", dev=dev, region=EU, port=eu_port, log_path=tmp / "eu.log",
                       extra=["--config", str(config),
                              "--peer", f"{US}=http://127.0.0.1:{us_port}"])
    us.start()
    try:
        eu.start()
    except BaseException:
        us.stop()
        raise
    return us, eu


def both_pinned(us: ServerProcess, eu: ServerProcess) -> bool:
    """Each has pinned the other and read its feed."""
    views = (peers_of(us).get(EU, {}), peers_of(eu).get(US, {}))
    return all(v.get("identity_fingerprint") and v.get("reachable") for v in views)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    tmp = tmp_path_factory.mktemp("peer-auth")
    dead_ap = f"http://127.0.0.1:{free_port()}"
    us, eu = start_pair(tmp, dead_ap)
    try:
        eventually(lambda: both_pinned(us, eu), "both regions to pin each other", 30)
        yield Pair(us, eu, dead_ap)
    finally:
        eu.stop()
        us.stop()


def test_a_configured_peer_replicates_through_signed_reads(pair: Pair) -> None:
    us = client_for(pair.us.url, region=US, access_key=ALICE[0], secret=ALICE[1])
    eu = client_for(pair.eu.url, region=EU, access_key=ALICE[0], secret=ALICE[1])
    key = us.create_key(MultiRegion=True)["KeyMetadata"]["KeyId"]
    blob = us.encrypt(KeyId=key, Plaintext=b"across")["CiphertextBlob"]
    us.replicate_key(KeyId=key, ReplicaRegion=EU)
    eventually(lambda: eu.describe_key(KeyId=key)["KeyMetadata"]["KeyState"] == "Enabled",
               "the replica in eu-west-1", 30)
    assert eu.decrypt(CiphertextBlob=blob)["Plaintext"] == b"across"
    for node, peer in ((pair.us, EU), (pair.eu, US)):
        figures = peers_of(node)[peer]
        assert figures["reachable"] is True and "refused_by_peer" not in figures
        assert figures["last_contact_ms"] > 0
    refusals = [line for line in pair.us.log_lines() + pair.eu.log_lines()
                if line.get("event") == "replication_read_refused"]
    assert refusals == []  # the followers' own signed reads were never refused


def test_requests_that_are_not_a_configured_peers_signed_first_use_are_refused(
        pair: Pair) -> None:
    url = pair.us.url + FEED
    eu_id, us_public = identity_of(pair.eu), public_of(pair.us)
    eu_fp = eu_id.fingerprint
    impostor = RegionIdentity(transport.generate_private())
    seq_before = pair.us.health()["log_seq"]

    def refusal(headers: dict[str, str]) -> str:
        status, doc = get_json(url, headers)
        assert (status, doc["__type"]) == (403, "AccessDeniedException"), doc
        assert set(doc) == {"__type", "message"} and "rows" not in doc
        return str(doc["message"])

    signing = ", ".join(peer_auth.SIGNED_HEADERS)
    assert refusal({}) == (
        "Replication is served only to this node's configured peers, in requests signed "
        "with their region identity key: name the calling region in X-Kms-Peer-Region and "
        f"sign the request ({signing}).")
    assert refusal({"X-Kms-Peer-Region": EU}) == (  # a forged claim, unsigned
        f"The request names region {EU} in X-Kms-Peer-Region but is not signed. Replication "
        "is served only to this node's configured peers, in requests signed with their "
        "region identity key: name the calling region in X-Kms-Peer-Region and sign the "
        f"request ({signing}).")

    good = signed(eu_id, us_public)
    status, doc = get_json(url, good)
    assert (status, doc["origin"]) == (200, US)  # the real peer's key, once
    assert refusal(good) == (f"The request from region {EU} replays nonce "
                             f"{good['X-Kms-Peer-Nonce']}, already used; each peer request "
                             "carries a new one.")

    status, doc = get_json(pair.us.url + f"/_kms/replication?origin={EU}",
                           signed(eu_id, us_public, query={"origin": EU}))
    assert (status, doc["__type"]) == (400, "ValidationException")  # admitted, then checked

    other_query = signed(eu_id, us_public, query={"origin": US, "after": "7"})
    assert refusal(other_query) == (f"The request's signature does not match region {EU}'s "
                                    f"identity key {eu_fp}.")
    flipped = signed(eu_id, us_public)
    sig = flipped["X-Kms-Peer-Signature"]
    flipped["X-Kms-Peer-Signature"] = ("0" if sig[0] != "0" else "1") + sig[1:]
    assert refusal(flipped) == (f"The request's signature does not match region {EU}'s "
                                f"identity key {eu_fp}.")

    stale = refusal(signed(eu_id, us_public, at=time.time() - 400))
    assert stale.startswith(f"The request from region {EU} is dated ")
    assert stale.endswith("s behind this node's clock; a peer request must be within 300 s "
                          "(check the clocks of both nodes).")
    ahead = refusal(signed(eu_id, us_public, at=time.time() + 400))
    assert "s ahead of this node's clock" in ahead

    assert refusal(signed(impostor, us_public, region="sa-east-1")) == (
        "Region 'sa-east-1' is not a configured peer of this node (us-east-1); replication "
        "is served only to its configured peers.")
    # forged X-Kms-Peer-Region: another key claims eu-west-1, by its own fingerprint or EU's
    assert refusal(signed(impostor, us_public)) == (
        f"The request names region {EU} but is signed with identity key "
        f"{impostor.fingerprint}; the key pinned for {EU} is {eu_fp}. Refusing it (if the "
        "peer's key was replaced on purpose, give the new key in its peer config).")
    forged = signed(impostor, us_public)
    forged["X-Kms-Peer-Key"] = eu_fp
    assert refusal(forged) == (f"The request's signature does not match region {EU}'s "
                               f"identity key {eu_fp}.")

    # ap-southeast-2 is configured but has never answered: no key to check against
    no_pin = refusal(signed(impostor, us_public, region=AP))
    assert no_pin.startswith(f"No identity key is pinned for region {AP} yet, and it could "
                             f"not be pinned now ({pair.dead_ap}/_kms/region did not answer: ")
    assert no_pin.endswith("); refusing the request.")

    partial = signed(eu_id, us_public)
    del partial["X-Kms-Peer-Nonce"]
    assert refusal(partial) == ("The peer request's signature is incomplete: "
                                "X-Kms-Peer-Nonce missing.")

    assert pair.us.health()["log_seq"] == seq_before  # nothing appended by any of them
    assert AP not in json.loads((pair.us.data_dir / "peers.json").read_text())
    logged = [line["reason"] for line in pair.us.log_lines()
              if line.get("event") == "replication_read_refused"]
    assert len(logged) == 12 and all(eu_id.public_key_b64 not in r for r in logged)


def test_a_peer_whose_identity_key_changed_is_refused_by_name(tmp_path: Path) -> None:
    us, eu = start_pair(tmp_path)
    try:
        eventually(lambda: both_pinned(us, eu), "both regions to pin each other", 30)
        old_fp = identity_of(eu).fingerprint
        eu.stop()
        (eu.data_dir / "region-identity.key").unlink()  # a new identity at restart
        eu.start()
        new_fp = identity_of(eu).fingerprint
        assert new_fp != old_fp
        why = (f"The request names region {EU} but is signed with identity key {new_fp}; "
               f"the key pinned for {EU} is {old_fp}. Refusing it (if the peer's key was "
               "replaced on purpose, give the new key in its peer config).")
        # eu-west-1's follower signs with its new key; us-east-1 refuses it, by name
        told = eventually(lambda: peers_of(eu).get(US, {}).get("refused_by_peer"),
                          "eu-west-1 to be refused by us-east-1", 30)
        assert told == why
        assert peers_of(eu)[US]["reachable"] is True  # it answers: it refuses
        status, doc = get_json(us.url + FEED, signed(identity_of(eu), public_of(us)))
        assert (status, doc) == (403, {"__type": "AccessDeniedException", "message": why})
        kept = json.loads((us.data_dir / "peers.json").read_text())
        assert transport.fingerprint(transport.public_from_text(kept[EU])) == old_fp
        logged = [line for line in eu.log_lines() if line.get("event") == "refused_by_peer"]
        assert [line["reason"] for line in logged] == [why]  # once, not per retry
    finally:
        eu.stop()
        us.stop()


def test_in_dev_loopback_is_open_but_a_peers_signature_is_still_checked(tmp_path: Path) -> None:
    us, eu = start_pair(tmp_path, dev=True)
    try:
        eventually(lambda: both_pinned(us, eu), "both regions to pin each other", 30)
        url, us_public = us.url + FEED, public_of(us)
        impostor = RegionIdentity(transport.generate_private())
        assert get_json(url)[0] == 200  # unsigned, from loopback
        assert get_json(url, signed(identity_of(eu), us_public))[0] == 200
        assert get_json(url, signed(impostor, us_public, region="sa-east-1"))[0] == 200
        status, doc = get_json(url, signed(impostor, us_public))  # claims eu-west-1
        assert (status, doc["__type"]) == (403, "AccessDeniedException")
        assert doc["message"].startswith(f"The request names region {EU} but is signed with "
                                         f"identity key {impostor.fingerprint}; ")
        status, doc = get_json(url, signed(identity_of(eu), us_public, at=time.time() - 400))
        assert (status, doc["__type"]) == (403, "AccessDeniedException")
    finally:
        eu.stop()
        us.stop()
