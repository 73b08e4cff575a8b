"""Fixes from a review of the sink (no broker).

1. A field the sink writes hidden from the integration user (field-level Read removed) or
   deleted: real Salesforce refuses the whole ``PATCH composite/sobjects`` with 400
   ``INVALID_FIELD`` ("No such column … on sobject of type …"). The writer bisected it
   down to single records (2n−1 calls) and dead-lettered every outcome; describe now
   decides first, and the records are held while the sink pauses.
2. An entry that failed on a lock 9 times, merged with a newer update of the same record
   that covers every field, passed its count on: one more lock dead-lettered both
   outcomes ("gave up after 10 attempts" for one tried once).
3. A 404 from describe at the fence check (an API version the org does not serve, Read on
   Order lost) was ``ConfigError: SINK_OUTCOME_MS_FIELD …``, exit 64, never restarted.
4. A record-triggered Flow that met a lock (``CANNOT_EXECUTE_FLOW_TRIGGER`` carrying
   ``UNABLE_TO_LOCK_ROW``) was dead-lettered instead of retried.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from common.errors import ConfigError, SalesforceError
from sinks import fence
from sinks.batch import Batcher, Entry, Tracked
from sinks.mapping import RecordKey, RecordUpdate, updates_for
from sinks.pausing import OUTAGE
from sinks.writer import CollectionWriter, is_transient
from tests.sinks.fakes import FENCE_FIELD, FakeCollections
from tests.sinks.helpers import outcome
from tests.sinks.test_sink_probing import assigned_sink
from tests.sinks.test_sink_rebalance import SERDE, Message

T0 = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


def invalid_field(sobject: str, name: str) -> SalesforceError:
    """Real Salesforce's answer to a PATCH naming a field the user cannot see (as the
    client raises it)."""
    return SalesforceError(
        f"Salesforce 400 INVALID_FIELD: [{{'message': \"No such column '{name}' on sobject of "
        f"type {sobject}\", 'errorCode': 'INVALID_FIELD'}}]",
        error_code="INVALID_FIELD", status=400, retryable=False)


def hide(fake: FakeCollections, sobject: str, name: str) -> None:
    """Field-level Read on ``sobject.name`` removed: describe leaves it out, and every call
    naming it is refused whole with 400 INVALID_FIELD."""
    del fake.fields[sobject][name]
    previous = fake.fail_call

    def refuse(records: list[dict[str, Any]]) -> Exception | None:
        if any(r["attributes"]["type"] == sobject and name in r for r in records):
            return invalid_field(sobject, name)
        return previous(records)

    fake.fail_call = refuse


def provisioned(n: int) -> list[Entry]:
    """``n`` Provisioned outcomes as the sink maps them: an Order and its Opportunity
    each, with the fence field — 2n records."""
    batcher = Batcher()
    for i in range(n):
        record = outcome(f"801{i:04d}", "Provisioned", opportunity_id=f"006{i:04d}", n=i,
                         completed_at=T0 + dt.timedelta(seconds=i))
        batcher.add(Tracked(0, i, None, None),
                    updates_for(record, fence_field=FENCE_FIELD), now=i)
    return batcher.take(now=n, limit=10_000)


# -- 1. a hidden or deleted field --------------------------------------------------------

def test_a_hidden_field_holds_its_records_instead_of_dead_lettering_them() -> None:
    fake = FakeCollections()
    hide(fake, "Opportunity", "WHMCS_Service_ID__c")
    result = CollectionWriter(fake).write(provisioned(100))
    assert not result.permanent, result.permanent[:3]
    assert len(result.no_access) == 100
    assert {e.key.sobject for e, _err in result.no_access} == {"Opportunity"}
    assert {err.code for _e, err in result.no_access} == {"INVALID_FIELD"}
    assert len(result.acked) == 100  # the Orders went, in a call of their own
    assert result.calls <= 3 and len(fake.calls) <= 3
    [problem] = result.access_problems
    assert "Opportunity.WHMCS_Service_ID__c is not visible to the integration user" in problem
    assert sorted(set(fake.describes)) == ["Opportunity", "Order"]
    assert len(fake.describes) == 2  # once per object and write


def test_a_hidden_fence_field_holds_every_record() -> None:
    fake = FakeCollections()
    hide(fake, "Order", FENCE_FIELD)
    hide(fake, "Opportunity", FENCE_FIELD)
    result = CollectionWriter(fake).write(provisioned(100))
    assert not result.permanent and not result.acked
    assert len(result.no_access) == 200
    assert result.calls <= 3
    assert len(result.access_problems) == 2
    assert all(f".{FENCE_FIELD} is not visible" in p for p in result.access_problems)


def test_invalid_field_refused_one_by_one_asks_describe_too() -> None:
    """The sandbox answers the same case per record (200, each record ``INVALID_FIELD``)."""
    fake = FakeCollections()
    del fake.fields["Opportunity"]["WHMCS_Service_ID__c"]
    taken = provisioned(3)
    for entry in taken:
        if entry.key.sobject == "Opportunity":
            fake.record_errors[entry.key.record_id] = [{
                "statusCode": "INVALID_FIELD", "fields": ["WHMCS_Service_ID__c"],
                "message": "No such column 'WHMCS_Service_ID__c' on sobject of type Opportunity"}]
    result = CollectionWriter(fake).write(taken)
    assert not result.permanent and len(result.no_access) == 3 and len(result.acked) == 3
    assert "WHMCS_Service_ID__c is not visible" in result.access_problems[0]


def test_an_invalid_field_describe_finds_fine_is_still_bisected_to_its_record() -> None:
    """Describe says every field written is there and updatable: the 400 is one record's,
    bisected and failed as before."""
    fake = FakeCollections()
    fake.fail_call = lambda records: invalid_field("Order", "Weird__c") if any(
        r["id"] == "8010005" for r in records) else None
    result = CollectionWriter(fake).write(provisioned(8))
    assert [(e.key.record_id, err.code) for e, err in result.permanent] == \
        [("8010005", "INVALID_FIELD")]
    assert len(result.acked) == 15 and not result.no_access
    assert len(fake.describes) <= 2


def test_a_describe_that_cannot_answer_holds_the_refused_call() -> None:
    fake = FakeCollections()
    hide(fake, "Opportunity", "WHMCS_Service_ID__c")

    def down(_sobject: str) -> dict:
        raise SalesforceError("Salesforce 503", status=503, retryable=True)

    fake.describe = down  # type: ignore[method-assign]
    result = CollectionWriter(fake).write(provisioned(4))
    assert not result.permanent and len(result.no_access) == 8
    assert all(p.startswith("cannot tell whether") for p in result.access_problems)


class Harness:
    """A sink on partition 0 with a fake consumer and a fake clock (as in
    test_sink_probing); ``probe`` flushes once past every pause and backoff."""

    def __init__(self, fake: FakeCollections, **settings: Any) -> None:
        self.fake = fake
        self.dead: list[Tracked] = []
        self.sink = assigned_sink(fake, self.dead, **settings)
        self.now = 1e9

    def consume(self, *messages: Any) -> None:
        for message in messages:
            self.sink._handle(message)

    def probe(self) -> None:
        sink = self.sink
        self.now = max(self.now + 0.001, sink.pauses.resume_at(self.now) + 0.001,
                       (sink.batcher.next_ready_at() or self.now) + 0.001)
        sink._flush(self.now)

    def close(self) -> None:
        self.sink.dead_letters.close()


@pytest.fixture
def harnesses() -> Any:
    made: list[Harness] = []

    def make(fake: FakeCollections, **settings: Any) -> Harness:
        made.append(Harness(fake, **settings))
        return made[-1]

    yield make
    for h in made:
        h.close()


def test_the_sink_pauses_on_a_hidden_field_and_writes_once_it_is_visible(
        harnesses: Any) -> None:
    fake = FakeCollections()
    hide(fake, "Order", FENCE_FIELD)
    h = harnesses(fake)
    h.consume(*(Message(0, o) for o in range(20)))
    for _ in range(5):
        h.probe()
    assert h.dead == [] and h.sink.pauses.paused
    assert OUTAGE in h.sink.pauses.reasons
    assert len(fake.calls) <= 5  # one refused call per probe, no bisection
    fake.fields["Order"][FENCE_FIELD] = {"name": FENCE_FIELD, "type": "double",
                                         "updateable": True, "precision": 18, "scale": 0}
    fake.fail_call = lambda _records: None
    for _ in range(5):
        if not len(h.sink.batcher):
            break
        h.probe()
    assert h.dead == [] and h.sink.stats.records_written == 20
    assert h.sink.offsets.outstanding() == 0


# -- 2. attempts of an entry merged under a newer write ---------------------------------

ORDER = RecordKey("Order", "8010000001")
LOCK = [{"statusCode": "UNABLE_TO_LOCK_ROW", "message": "unable to obtain exclusive access "
         "to this record", "fields": []}]


def failing_write(retries: int) -> tuple[Batcher, Entry]:
    """A batcher holding ORDER's Failed write (version 10), taken at 0, 1, … and retried
    ``retries`` times (at least once); the entry taken last."""
    batcher = Batcher()
    batcher.add(Tracked(0, 0, None, None),
                [RecordUpdate(ORDER, {"Activation_Status__c": "Failed", "x": 1}, 10)], now=0)
    taken: list[Entry] = []
    for attempt in range(retries):
        [entry] = batcher.take(now=attempt, limit=200)
        batcher.retry(entry, not_before=attempt + 1)
        taken.append(entry)
    return batcher, taken[-1]


def add_covering_update(batcher: Batcher) -> None:
    """A newer write of ORDER (version 20, at 20) naming every field of the Failed one."""
    batcher.add(Tracked(0, 1, None, None),
                [RecordUpdate(ORDER, {"Activation_Status__c": "Provisioned", "x": 2}, 20)],
                now=20)


def test_a_newer_update_covering_every_field_starts_its_own_count_when_added() -> None:
    batcher, entry = failing_write(retries=9)
    assert entry.attempts == 9
    add_covering_update(batcher)
    [merged] = batcher.take(now=30, limit=200)
    assert merged.fields == {"Activation_Status__c": "Provisioned", "x": 2}
    assert merged.attempts == 0


def test_a_failing_entry_merged_under_a_newer_covering_one_takes_the_newer_count() -> None:
    batcher, _ = failing_write(retries=8)
    [entry] = batcher.take(now=9, limit=200)  # out: its 9th failure is coming
    add_covering_update(batcher)
    batcher.retry(entry, not_before=10)  # 9 failures: merged under the newer one
    [merged] = batcher.take(now=30, limit=200)
    assert merged.fields == {"Activation_Status__c": "Provisioned", "x": 2}
    assert merged.attempts == 0


def test_a_partial_newer_update_keeps_the_count_of_the_entry_it_joins() -> None:
    """Equal versions merge whatever the fields: the older write's fields are still in the
    merged entry, so its count stays."""
    batcher, _ = failing_write(retries=3)
    batcher.add(Tracked(0, 1, None, None), [RecordUpdate(ORDER, {"x": 2}, 10)], now=20)
    [merged] = batcher.take(now=30, limit=200)
    assert merged.fields == {"Activation_Status__c": "Failed", "x": 2} and merged.attempts == 3


def newer(message: Message, seconds: float) -> Message:
    """Another outcome of ``message``'s Order, ``seconds`` later."""
    later = Message(message.partition(), message.offset() + 1)
    record = SERDE.decode(message.value(), message.headers())
    record["completed_at"] = record["completed_at"] + dt.timedelta(seconds=seconds)
    later._value = SERDE.encode(record)
    later._key = message.key()
    return later


def test_after_nine_locks_a_newer_outcome_is_retried_not_dead_lettered(harnesses: Any) -> None:
    fake = FakeCollections()
    first = Message(0, 0)
    order_id = first.key().decode()
    fake.record_errors[order_id] = LOCK
    h = harnesses(fake)
    h.consume(first)
    for _ in range(9):
        h.probe()
    [[entry]] = h.sink.batcher._pending.values()
    assert entry.attempts == 9 and h.dead == []
    h.consume(newer(first, 60))
    h.probe()  # a 10th lock: the merged entry (the newer write) was tried once
    assert h.dead == [], [t.errors for t in h.dead]
    del fake.record_errors[order_id]
    h.probe()
    assert h.dead == [] and h.sink.offsets.outstanding() == 0
    assert h.sink.stats.records_written == 1


# -- 3. a 404 from describe at the fence check --------------------------------------------

def not_found(_sobject: str) -> dict:
    raise SalesforceError("Salesforce 404 NOT_FOUND: [{'errorCode': 'NOT_FOUND', 'message': "
                          "'The requested resource does not exist'}]", error_code="NOT_FOUND",
                          status=404, retryable=False)


def test_a_404_from_describe_does_not_blame_the_fence_setting() -> None:
    fake = FakeCollections()
    fake.describe = not_found  # type: ignore[method-assign]
    with pytest.raises(SalesforceError) as raised:
        fence.check_field(fake, FENCE_FIELD)
    assert not isinstance(raised.value, ConfigError)
    assert "SINK_OUTCOME_MS_FIELD" not in str(raised.value)
    assert "SF_API_VERSION" in str(raised.value)
    assert fence.start_check(fake, FENCE_FIELD) is True  # postponed, not an exit


def test_the_postponed_check_pauses_on_a_404_and_resumes(harnesses: Any) -> None:
    fake = FakeCollections()
    described = fake.describe
    fake.describe = not_found  # type: ignore[method-assign]
    h = harnesses(fake)
    h.sink._fence_unchecked = True
    h.consume(*(Message(0, o) for o in range(3)))
    h.probe()
    assert h.sink.pauses.paused and h.dead == [] and not fake.calls
    fake.describe = described  # type: ignore[method-assign]
    h.probe()
    assert not h.sink._fence_unchecked and h.sink.stats.records_written == 3
    assert h.dead == []


# -- 4. a lock met by a record-triggered Flow -----------------------------------------------

FLOW_LOCK = ("We can't save this record because the “Order Activation” process failed. Give "
             "your Salesforce admin these details. This error occurred when the flow tried to "
             "update records: UNABLE_TO_LOCK_ROW: unable to obtain exclusive access to this "
             "record or 1 records: 0060000000001. You can look up ExceptionCode values in the "
             "SOAP API Developer Guide.")


def test_a_lock_met_by_a_flow_is_transient() -> None:
    assert is_transient("CANNOT_EXECUTE_FLOW_TRIGGER", FLOW_LOCK)
    assert not is_transient("CANNOT_EXECUTE_FLOW_TRIGGER", "This error occurred when the flow "
                            "tried to update records: REQUIRED_FIELD_MISSING: Amount")
    fake = FakeCollections()
    taken = provisioned(2)
    orders = [e for e in taken if e.key.sobject == "Order"]
    fake.record_errors[orders[0].key.record_id] = [
        {"statusCode": "CANNOT_EXECUTE_FLOW_TRIGGER", "message": FLOW_LOCK, "fields": []}]
    fake.record_errors[orders[1].key.record_id] = [
        {"statusCode": "CANNOT_EXECUTE_FLOW_TRIGGER", "message": "This error occurred when "
         "the flow tried to update records: REQUIRED_FIELD_MISSING: Amount", "fields": []}]
    result = CollectionWriter(fake).write(taken)
    assert [e.key.record_id for e, _err in result.transient] == [orders[0].key.record_id]
    assert [e.key.record_id for e, _err in result.permanent] == [orders[1].key.record_id]
