"""The topology a node is given: ``--peer REGION=URL`` flags over ``[[peers]]`` tables."""

from __future__ import annotations

import base64

import pytest

from regions.topology import Peer, Topology

KEY = base64.b64encode(bytes(range(32))).decode()
ZERO_POINT = base64.b64encode(bytes(32)).decode()
ORDER_ONE = base64.b64encode(b"\x01" + bytes(31)).decode()


def test_the_identity_key_is_kept_as_the_base64_text_pins_take() -> None:
    """PeerPins.pin(configured: str) takes base64 text: the topology hands it over as such,
    in canonical form (surrounding blanks dropped), already checked."""
    t = Topology.parse("us-east-1", [{"region": "eu-west-1", "url": "http://a:1",
                                      "identity_key": f"  {KEY}\n"}])
    key = t.peers["eu-west-1"].identity_key
    assert key == KEY and isinstance(key, str)


def test_flags_and_tables_give_peers() -> None:
    t = Topology.parse("us-east-1",
                       [{"region": "eu-west-1", "url": "http://127.0.0.1:8081/",
                         "identity_key": KEY}],
                       ["ap-southeast-2=https://kms.example:8443"])
    assert t.region == "us-east-1"
    assert t.peers == {
        "eu-west-1": Peer("eu-west-1", "http://127.0.0.1:8081", KEY),
        "ap-southeast-2": Peer("ap-southeast-2", "https://kms.example:8443"),
    }


def test_a_flag_replaces_the_files_url_and_keeps_its_identity_key() -> None:
    t = Topology.parse("us-east-1", [{"region": "eu-west-1", "url": "http://a:1",
                                      "identity_key": KEY}], ["eu-west-1=http://b:2"])
    assert t.peers["eu-west-1"] == Peer("eu-west-1", "http://b:2", KEY)


def test_no_peers() -> None:
    assert Topology.parse("us-east-1").peers == {}


@pytest.mark.parametrize(("tables", "flags", "message"), [
    ([], ["eu-west-1"], "--peer 'eu-west-1': expected REGION=URL"),
    ([], ["=http://a:1"], "expected REGION=URL"),
    ([], ["eu-west-1="], "expected REGION=URL"),
    ([], ["Europe=http://a:1"], "'Europe' is not a region name like eu-west-1"),
    ([], ["us-east-1=http://a:1"], "us-east-1 is this node's own region, not a peer"),
    ([], ["eu-west-1=http://a:1", "eu-west-1=http://b:2"],
     "region eu-west-1 is named by another --peer"),
    ([], ["eu-west-1=ftp://a:1"], "URL 'ftp://a:1' is not http(s)://host[:port]"),
    ([], ["eu-west-1=127.0.0.1:8081"], "is not http(s)://host[:port]"),
    ([], ["eu-west-1=http://a:99999"], "is not http(s)://host[:port]"),
    ([], ["eu-west-1=http://a:1/path"], "is not http(s)://host[:port]"),
    ([{"region": "eu-west-1", "url": "http://a:1"}, {"region": "eu-west-1", "url": "http://b:1"}],
     [], "[[peers]]: region eu-west-1 is named twice"),
    ([{"region": "us-east-1", "url": "http://a:1"}], [], "this node's own region"),
    ([{"region": "eu-west-1"}], [], "each peer needs region and url strings"),
    ([{"region": "eu-west-1", "url": "http://a:1", "port": 1}], [], "unknown settings port"),
    ([{"region": "eu-west-1", "url": "mailto:x"}], [], "is not http(s)://host[:port]"),
    ([{"region": "eu-west-1", "url": "http://a:1", "identity_key": "not base64!"}], [],
     "identity_key: an identity key must be base64 of 32 bytes"),
    ([{"region": "eu-west-1", "url": "http://a:1", "identity_key": "AAAA"}], [],
     "identity_key: an X25519 public key is 32 bytes, not 3"),
    # the all-zero point and the point of order 1: every shared secret would be zero
    ([{"region": "eu-west-1", "url": "http://a:1", "identity_key": ZERO_POINT}], [],
     "identity_key: the X25519 public key is a low-order point"),
    ([{"region": "eu-west-1", "url": "http://a:1", "identity_key": ORDER_ONE}], [],
     "identity_key: the X25519 public key is a low-order point"),
])
def test_mistakes_are_one_line_naming_the_value(tables: list[dict[str, object]],
                                                flags: list[str], message: str) -> None:
    with pytest.raises(ValueError) as info:
        Topology.parse("us-east-1", tables, flags)
    assert message in str(info.value)
    assert "\n" not in str(info.value)
