"""The key-state x operation table and the Key decisions, checked as data."""

from __future__ import annotations

import dataclasses

import pytest

from kms.domain import events as ev
from kms.domain import key as keys
from kms.domain.errors import (
    DisabledException,
    KMSInvalidStateException,
    LimitExceededException,
    TagException,
)
from kms.domain.key import STATE_RULES, KeyState, check_state


def make_key(state: KeyState = KeyState.ENABLED) -> keys.Key:
    created = ev.KeyCreated("1234abcd-12ab-34cd-56ef-1234567890ab", "111122223333", "us-east-1",
                            "", "SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT", "AWS_KMS", "CUSTOMER",
                            False, "{}", (), ev.Material("ab" * 32, b"sealed"))
    return dataclasses.replace(keys.created(created, 0), state=state)


def test_every_row_covers_every_state() -> None:
    for op, row in STATE_RULES.items():
        assert set(row) == set(KeyState), op


@pytest.mark.parametrize("op", ["Encrypt", "Decrypt", "GenerateDataKey", "ReEncrypt", "Sign"])
def test_crypto_operations_follow_appendix_b(op: str) -> None:
    check_state(op, make_key(KeyState.ENABLED))
    check_state(op, make_key(KeyState.UPDATING))
    with pytest.raises(DisabledException, match=r"key/.* is disabled\.$"):
        check_state(op, make_key(KeyState.DISABLED))
    with pytest.raises(KMSInvalidStateException, match=r"is pending deletion\.$"):
        check_state(op, make_key(KeyState.PENDING_DELETION))
    with pytest.raises(KMSInvalidStateException, match=r"is pending import\.$"):
        check_state(op, make_key(KeyState.PENDING_IMPORT))
    with pytest.raises(KMSInvalidStateException, match=r"is creating\.$"):
        check_state(op, make_key(KeyState.CREATING))


def test_management_operations_allowed_when_disabled() -> None:
    for op in ("DescribeKey", "CreateAlias", "TagResource", "UpdateKeyDescription", "EnableKey",
               "ScheduleKeyDeletion", "ListResourceTags"):
        check_state(op, make_key(KeyState.DISABLED))


def test_cancel_deletion_needs_pending_deletion() -> None:
    check_state("CancelKeyDeletion", make_key(KeyState.PENDING_DELETION))
    with pytest.raises(KMSInvalidStateException, match="is not pending deletion"):
        check_state("CancelKeyDeletion", make_key(KeyState.ENABLED))


def test_enable_disable_are_idempotent_decisions() -> None:
    k = make_key()
    assert keys.enable(k) == []
    assert keys.disable(k) == [ev.KeyDisabled(k.key_id)]
    disabled = keys.apply(k, ev.KeyDisabled(k.key_id))
    assert disabled.state is KeyState.DISABLED and keys.disable(disabled) == []


def test_tags_merge_overwrite_and_untag() -> None:
    k = make_key()
    k = keys.apply(k, keys.tag(k, (("a", "1"), ("b", "2")))[0])
    k = keys.apply(k, keys.tag(k, (("a", "3"),))[0])
    assert dict(k.tags) == {"a": "3", "b": "2"}
    assert keys.untag(k, ("zzz",)) == []
    k = keys.apply(k, keys.untag(k, ("a", "zzz"))[0])
    assert dict(k.tags) == {"b": "2"}


def test_tag_rules() -> None:
    # AWS's words and order: duplicates, the request's count, the reserved prefix (any
    # case), then the key's total (TagResource's LimitExceededException).
    k = make_key()
    for bad, message in [
        ((("aws:x", "1"),), "Tags beginning with aws: are reserved"),
        ((("AWS:x", "1"),), "Tags beginning with aws: are reserved"),
        ((("Aws:x", "1"),), "Tags beginning with aws: are reserved"),
        ((("a", "1"), ("a", "2")), "Duplicate tag keys"),
        ((("aws:a", "1"), ("aws:a", "2")), "Duplicate tag keys"),
        (tuple((f"k{i}", "v") for i in range(51)), "Too many tags"),
        ((*((f"k{i}", "v") for i in range(50)), ("aws:x", "v")), "Too many tags"),
    ]:
        with pytest.raises(TagException) as caught:
            keys.tag(k, bad)
        assert caught.value.message == message, bad
    with pytest.raises(TagException) as caught:
        keys.untag(k, ("AWS:createdBy",))
    assert caught.value.message == "Tags beginning with aws: are reserved"
    assert keys.tag(k, (("awsx", "1"), ("my-aws:", "2")))  # only the prefix is reserved
    full = dataclasses.replace(k, tags=tuple((f"k{i}", "v") for i in range(50)))
    with pytest.raises(LimitExceededException) as limit:
        keys.tag(full, (("one-more", "v"),))
    assert limit.value.message == "Too many tags"
    assert keys.tag(full, (("k0", "overwritten"),))  # overwriting stays within 50
