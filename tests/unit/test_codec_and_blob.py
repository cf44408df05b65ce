"""Property tests: the event codec round-trips every event; the blob parser
either parses or raises the one declared error; ciphertexts bind their context."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kms.crypto import blob as blobfmt
from kms.crypto import symmetric
from kms.domain import events as ev
from kms.domain.errors import InvalidCiphertextException

text = st.text(max_size=40)
tags = st.lists(st.tuples(text, text), max_size=5).map(tuple)
materials = st.builds(ev.Material, st.text("0123456789abcdef", min_size=64, max_size=64),
                      st.binary(max_size=80), st.binary(max_size=40))
events = st.one_of(
    st.builds(ev.KeyCreated, key_id=text, account=text, region=text, description=text,
              key_spec=text, key_usage=text, origin=text, key_manager=text,
              multi_region=st.booleans(), policy=text, tags=tags,
              material=st.none() | materials),
    st.builds(ev.KeyEnabled, text),
    st.builds(ev.KeyDisabled, text),
    st.builds(ev.KeyDescriptionUpdated, text, text),
    st.builds(ev.KeyTagged, text, tags),
    st.builds(ev.KeyUntagged, text, st.lists(text, max_size=4).map(tuple)),
    st.builds(ev.AliasCreated, text, text),
    st.builds(ev.AliasUpdated, text, text),
    st.builds(ev.AliasDeleted, text),
    st.builds(ev.ApiCallRecorded, text, text, text, text, text, text, text, st.booleans(),
              st.dictionaries(text, text | st.integers(-(2**63), 2**63 - 1) | st.booleans(),
                              max_size=4),
              st.lists(text, max_size=3).map(tuple), text, text,
              st.dictionaries(text, text, max_size=2)),
)


@given(events)
def test_every_event_round_trips(event: ev.Event) -> None:
    assert ev.decode(event.type_name, ev.encode(event)) == event


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_blob_parser_parses_or_raises_the_declared_error(data: bytes) -> None:
    try:
        parsed = blobfmt.parse(data)
    except InvalidCiphertextException as exc:
        assert exc.message == ""
    else:
        assert parsed.header + parsed.body == data


contexts = st.none() | st.dictionaries(st.text(min_size=1, max_size=8), st.text(max_size=8),
                                       max_size=4)


@settings(max_examples=100)
@given(st.binary(min_size=1, max_size=64), contexts, st.data())
def test_ciphertext_opens_only_with_its_context_and_bytes(plaintext: bytes, context: dict | None,
                                                          data: st.DataObject) -> None:
    material, key_id, mid = os.urandom(32), "1234abcd-12ab-34cd-56ef-1234567890ab", "ab" * 32
    blob = symmetric.encrypt(material, key_id, mid, plaintext, context)
    reordered = dict(reversed(list((context or {}).items())))
    assert symmetric.decrypt(material, blobfmt.parse(blob), reordered) == plaintext
    i = data.draw(st.integers(0, len(blob) - 1))
    flipped = blob[:i] + bytes([blob[i] ^ 0x01]) + blob[i + 1:]
    with pytest.raises(InvalidCiphertextException):
        symmetric.decrypt(material, blobfmt.parse(flipped), context)
    other = dict(context or {})
    other["extra"] = "x"
    with pytest.raises(InvalidCiphertextException):
        symmetric.decrypt(material, blobfmt.parse(blob), other)


def test_canonical_context_is_order_independent_and_unambiguous() -> None:
    a = blobfmt.canonical_context({"a": "1", "b": "2"})
    assert a == blobfmt.canonical_context({"b": "2", "a": "1"})
    assert blobfmt.canonical_context({"ab": "c"}) != blobfmt.canonical_context({"a": "bc"})
    assert blobfmt.canonical_context({}) == blobfmt.canonical_context(None) == b""


def test_blob_layout_matches_the_readme() -> None:
    key_id = "mrk-" + "0" * 32
    blob = symmetric.encrypt(os.urandom(32), key_id, "cd" * 32, b"hello", None)
    assert blob[0] == 1 and blob[1] == len(key_id)
    assert blob[2:2 + len(key_id)].decode() == key_id
    assert len(blob) == 2 + len(key_id) + 32 + 16 + 12 + len(b"hello") + 16
