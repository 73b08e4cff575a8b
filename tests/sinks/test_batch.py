"""Merging (later outcome wins), completion and commit positions — no Kafka, no HTTP."""

from __future__ import annotations

import pytest

from sinks.batch import Batcher, OffsetTracker, RecordError, Tracked
from sinks.mapping import RecordKey, RecordUpdate

ORDER_A = RecordKey("Order", "801A")
ORDER_B = RecordKey("Order", "801B")
OPP_A = RecordKey("Opportunity", "006A")


def tracked(offset: int, partition: int = 0) -> Tracked:
    return Tracked(partition, offset, b"k", b"v")


def test_later_outcome_wins_field_by_field() -> None:
    batcher = Batcher()
    first, second = tracked(0), tracked(1)
    batcher.add(first, [RecordUpdate(ORDER_A, {"Activation_Status__c": "Provisioned",
                                               "WHMCS_Order_Id__c": 5,
                                               "Activation_Error__c": None})], now=0)
    batcher.add(second, [RecordUpdate(ORDER_A, {"Activation_Status__c": "Failed",
                                                "Activation_Error__c": "boom"})], now=1)
    [entry] = batcher.take(now=2, limit=200)
    assert entry.fields == {"Activation_Status__c": "Failed", "WHMCS_Order_Id__c": 5,
                            "Activation_Error__c": "boom"}
    assert entry.sources == [first, second]
    assert entry.payload()["attributes"] == {"type": "Order"}
    assert entry.payload()["id"] == "801A"


def test_outcome_completes_only_when_all_its_records_settled() -> None:
    batcher = Batcher()
    t = tracked(0)
    batcher.add(t, [RecordUpdate(ORDER_A, {"a": 1}), RecordUpdate(OPP_A, {"b": 2})], now=0)
    order, opp = batcher.take(now=0, limit=200)
    assert batcher.ack(order) == []
    assert batcher.fail(opp, RecordError(OPP_A, "ENTITY_IS_DELETED", "gone")) == [t]
    assert [e.code for e in t.errors] == ["ENTITY_IS_DELETED"]


def test_take_respects_limit_and_age_order() -> None:
    batcher = Batcher()
    for i in range(5):
        batcher.add(tracked(i), [RecordUpdate(RecordKey("Order", f"801{i}"), {})], now=10 - i)
    taken = batcher.take(now=20, limit=2)
    assert [e.key.record_id for e in taken] == ["8014", "8013"]
    assert len(batcher) == 3


def test_due_by_size_or_linger() -> None:
    batcher = Batcher()
    batcher.add(tracked(0), [RecordUpdate(ORDER_A, {})], now=100.0)
    assert not batcher.due(100.1, batch_size=2, linger_s=0.5)
    assert batcher.due(100.6, batch_size=2, linger_s=0.5)
    batcher.add(tracked(1), [RecordUpdate(ORDER_B, {})], now=100.1)
    assert batcher.due(100.2, batch_size=2, linger_s=0.5)


def test_linger_counts_from_the_oldest_ready_entry() -> None:
    """A steady trickle of new updates must not hold back the one that has waited."""
    batcher = Batcher()
    batcher.add(tracked(0), [RecordUpdate(ORDER_A, {})], now=100.0)
    batcher.add(tracked(1), [RecordUpdate(ORDER_B, {})], now=100.4)
    assert not batcher.due(100.45, batch_size=10, linger_s=0.5)
    assert batcher.due(100.6, batch_size=10, linger_s=0.5)


def test_retry_merges_under_newer_update_and_waits() -> None:
    batcher = Batcher()
    old, new = tracked(0), tracked(1)
    batcher.add(old, [RecordUpdate(ORDER_A, {"Activation_Status__c": "Failed", "x": 1})], now=0)
    [entry] = batcher.take(now=0, limit=200)
    # while the first write was out, a newer outcome for the same record arrived
    batcher.add(new, [RecordUpdate(ORDER_A, {"Activation_Status__c": "Provisioned"})], now=1)
    batcher.retry(entry, not_before=5)
    assert len(batcher) == 1
    assert batcher.take(now=4, limit=200) == []
    [merged] = batcher.take(now=5, limit=200)
    assert merged.fields == {"Activation_Status__c": "Provisioned", "x": 1}
    assert merged.sources == [old, new] and merged.attempts == 1
    assert batcher.ack(merged) == [old, new]


def test_whole_call_requeue_does_not_count_attempts() -> None:
    batcher = Batcher()
    batcher.add(tracked(0), [RecordUpdate(ORDER_A, {})], now=0)
    [entry] = batcher.take(now=0, limit=200)
    batcher.retry(entry, not_before=1, count_attempt=False)
    assert batcher.take(now=1, limit=200)[0].attempts == 0


def test_forget_drops_revoked_partitions_only() -> None:
    batcher = Batcher()
    kept, revoked = tracked(0, partition=0), tracked(0, partition=1)
    batcher.add(kept, [RecordUpdate(OPP_A, {"StageName": "Active"})], now=0)
    batcher.add(revoked, [RecordUpdate(OPP_A, {"StageName": "Active"}),
                          RecordUpdate(ORDER_B, {})], now=0)
    batcher.forget({1})
    [entry] = batcher.take(now=0, limit=200)
    assert entry.key == OPP_A and entry.sources == [kept]


def test_commit_position_is_lowest_open_offset() -> None:
    offsets = OffsetTracker()
    for o in range(5):
        offsets.consumed(0, o)
    offsets.consumed(1, 7)
    offsets.complete(0, 0)
    offsets.complete(0, 2)
    offsets.complete(0, 3)
    assert offsets.committable() == {0: 1, 1: 7}
    offsets.committed({0: 1, 1: 7})
    assert offsets.committable() == {}
    offsets.complete(0, 1)
    offsets.complete(0, 4)
    offsets.complete(1, 7)
    assert offsets.committable() == {0: 5, 1: 8}
    assert offsets.outstanding() == 0


def test_forgotten_partition_is_not_committed() -> None:
    offsets = OffsetTracker()
    offsets.consumed(2, 10)
    offsets.complete(2, 10)
    offsets.forget({2})
    assert offsets.committable() == {}


def test_a_partition_assigned_again_commits_from_where_it_resumes() -> None:
    """What was committed before the revocation says nothing about the next assignment
    (the group's offsets may have been moved back meanwhile): its positions count anew."""
    offsets = OffsetTracker()
    offsets.consumed(2, 10)
    offsets.complete(2, 10)
    offsets.committed({2: 11})
    offsets.forget({2})
    offsets.consumed(2, 3)  # assigned again, resumed at an earlier offset
    offsets.complete(2, 3)
    assert offsets.committable() == {2: 4}


def test_a_retried_entry_goes_back_before_a_newer_update_that_stays_apart() -> None:
    """A newer update that leaves out a field of the taken one waits, neither sendable while
    the taken one is out nor overtaking it once it is put back for a retry."""
    batcher = Batcher()
    old, new = tracked(0), tracked(1)
    batcher.add(old, [RecordUpdate(OPP_A, {"StageName": "Active", "Service__c": 1}, 10)], now=0)
    [entry] = batcher.take(now=0, limit=200)
    batcher.add(new, [RecordUpdate(OPP_A, {"StageName": "Active"}, 20)], now=1)
    assert batcher.take(now=1, limit=200) == [] and len(batcher) == 1
    batcher.retry(entry, not_before=5)
    assert batcher.take(now=4, limit=200) == [] and len(batcher) == 2
    [again] = batcher.take(now=5, limit=200)
    assert again is entry and again.version == 10 and again.attempts == 1
    assert batcher.ack(again) == [old]
    [then] = batcher.take(now=5, limit=200)
    assert then.fields == {"StageName": "Active"} and then.sources == [new]


def test_an_isolated_entry_is_taken_alone_and_never_with_others() -> None:
    batcher = Batcher()
    for i in range(3):
        batcher.add(tracked(i), [RecordUpdate(RecordKey("Order", f"801{i}"), {})], now=i)
    [first, *_rest] = batcher.take(now=5, limit=200)
    for entry in _rest:
        batcher.retry(entry, not_before=0, count_attempt=False)
    first.lone_failures = 1  # its call alone failed
    batcher.retry(first, not_before=0, count_attempt=False)
    assert batcher.take(now=5, limit=200) == [first]  # the oldest, alone
    batcher.retry(first, not_before=10, count_attempt=False)
    assert [e.key.record_id for e in batcher.take(now=5, limit=200)] == ["8011", "8012"]


@pytest.mark.parametrize("failed", ["lone_failures", "cap"])
def test_a_failing_entry_merged_on_retry_keeps_being_sent_alone(failed: str) -> None:
    """A record whose calls kept failing (isolated, or capped at one) is put back while a
    newer update of it arrived: the merged entry must still go alone, not with others."""
    batcher = Batcher()
    batcher.add(tracked(0), [RecordUpdate(ORDER_A, {"a": 1})], now=0)
    batcher.add(tracked(1), [RecordUpdate(ORDER_B, {})], now=1)
    [poison] = batcher.take(now=2, limit=1)
    assert poison.key == ORDER_A
    setattr(poison, failed, 1)
    batcher.add(tracked(2), [RecordUpdate(ORDER_A, {"a": 2})], now=3)  # while it was out
    batcher.retry(poison, not_before=0, count_attempt=False)
    assert len(batcher) == 2  # merged with the newer update
    taken = batcher.take(now=5, limit=200)
    assert [e.key for e in taken] == [ORDER_A], "sent with others again"
    [alone] = taken
    assert alone.fields == {"a": 2}
    assert getattr(alone, failed) == 1
