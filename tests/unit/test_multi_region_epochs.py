"""The shared projection of a multi-region key fences primaries by epoch: the primary is the
region named at the highest epoch seen, and a primary's event from an older epoch (a stale
primary that has not seen the handover) changes nothing, in whatever order rows arrive."""

from __future__ import annotations

from kms.domain import events as ev
from kms.domain import multi_region as mr

KEY = "mrk-" + "0" * 32


def _set() -> mr.MultiRegionKey:
    mrk = mr.created(ev.MultiRegionKeyCreated(KEY, "111122223333", "us-east-1",
                                              "SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT", "AWS_KMS"))
    for region in ("eu-west-1", "ap-southeast-2"):
        mrk = mr.apply(mrk, ev.ReplicaAdded(KEY, region, "", "{}", (), 1))
    return mrk


def test_a_handover_names_the_new_primary_under_the_next_epoch() -> None:
    mrk = mr.apply(_set(), ev.PrimaryRegionUpdated(KEY, "eu-west-1", "us-east-1", 2))

    assert (mrk.primary_region, mrk.epoch, mrk.handing_over) == ("eu-west-1", 2, True)
    assert [r.region for r in mrk.replicas] == ["ap-southeast-2", "us-east-1"]
    accepted = mr.apply(mrk, ev.PrimaryRegionAccepted(KEY, "eu-west-1", 2))
    assert not accepted.handing_over


def test_a_stale_primarys_events_are_fenced_off() -> None:
    mrk = mr.apply(_set(), ev.PrimaryRegionUpdated(KEY, "eu-west-1", "us-east-1", 2))

    stale = [
        ev.MaterialShared(KEY, "a" * 64, b"", (("ap-southeast-2", b"sealed"),), "ON_DEMAND",
                          1, 1),
        ev.RotationScheduleShared(KEY, 90, 123, 1),
        ev.ReplicaAdded(KEY, "ca-central-1", "", "{}", (), 1),
        ev.PrimaryRegionUpdated(KEY, "ap-southeast-2", "us-east-1", 2),  # not higher
        ev.PrimaryRegionAccepted(KEY, "us-east-1", 1),
    ]
    after = mrk
    for e in stale:
        after = mr.apply(after, e)

    assert after == mrk
    fresh = mr.apply(mrk, ev.RotationScheduleShared(KEY, 90, 123, 2))
    assert (fresh.rotation_period_days, fresh.next_rotation_ms) == (90, 123)


def test_a_handover_to_a_region_without_a_replica_changes_nothing() -> None:
    mrk = _set()
    assert mr.apply(mrk, ev.PrimaryRegionUpdated(KEY, "sa-east-1", "us-east-1", 2)) == mrk


def test_a_deleted_replica_leaves_the_set() -> None:
    mrk = mr.apply(_set(), ev.ReplicaDeleted(KEY, "eu-west-1"))
    assert [r.region for r in mrk.replicas] == ["ap-southeast-2"]
