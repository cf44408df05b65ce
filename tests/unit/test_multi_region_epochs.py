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


def _fold(order: list[tuple[str, ev.Event]]) -> mr.MultiRegionKey:
    """Fold shared events through the region's State, as the log hands them over."""
    from kms.store.state import State

    state = State()
    for seq, (origin, event) in enumerate(order, start=1):  # a replicated row keeps its time
        at_ms = 1000 + getattr(event, "epoch", 0) * 10 + len(getattr(event, "region", ""))
        state.apply(ev.Envelope(seq, mr.mrk_stream(KEY), seq, origin, seq, at_ms, event))
    return state.mrks[KEY]


def test_events_that_land_before_what_they_follow_are_held_until_it_arrives() -> None:
    """A region pulls each origin on its own: the new primary's epoch-2 events and a replica's
    deletion can land before the old primary's rows they answer. The fold is the same."""
    created = ev.MultiRegionKeyCreated(KEY, "111122223333", "us-east-1", "SYMMETRIC_DEFAULT",
                                       "ENCRYPT_DECRYPT", "AWS_KMS")
    from_us = [("us-east-1", created),
               ("us-east-1", ev.ReplicaAdded(KEY, "eu-west-1", "", "{}", (), 1)),
               ("us-east-1", ev.ReplicaAdded(KEY, "ap-southeast-2", "", "{}", (), 1)),
               ("us-east-1", ev.PrimaryRegionUpdated(KEY, "eu-west-1", "us-east-1", 2))]
    from_eu = [("eu-west-1", ev.PrimaryRegionAccepted(KEY, "eu-west-1", 2)),
               ("eu-west-1", ev.ReplicaAdded(KEY, "ap-northeast-1", "", "{}", (), 2))]
    from_ap = [("ap-southeast-2", ev.ReplicaDeleted(KEY, "ap-southeast-2"))]

    in_order = _fold(from_us + from_eu + from_ap)
    assert (in_order.primary_region, in_order.epoch, in_order.handing_over) == (
        "eu-west-1", 2, False)
    assert sorted(r.region for r in in_order.replicas) == ["ap-northeast-1", "us-east-1"]
    for order in (from_eu + from_ap + from_us, from_ap + from_eu + from_us,
                  from_us[:1] + from_eu + from_us[1:] + from_ap):
        assert _fold(order) == in_order
