"""The outcome fence in the sink: versioned updates, merging in version order, the rule's
refusal recognised as superseded, the start-up check of the field, and the loop that
settles superseded records (in-memory Salesforce; the sandbox's rule is tested in
``tests/sandbox/test_salesforce_validation.py``, paused sinks in ``test_sink_pause.py``)."""

from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path

import pytest

from common.avro import epoch_ms
from common.errors import ConfigError, SalesforceAuthError, SalesforceError, SalesforceLimitError
from common.settings import KafkaSettings, SinkSettings
from sandbox.salesforce import validation
from sinks.app import Sink
from sinks.batch import Batcher, Tracked
from sinks.fence import (
    RULE_MESSAGE,
    RULE_NAME,
    check_field,
    is_superseded,
    rule_formula,
    start_check,
)
from sinks.mapping import OPPORTUNITY, ORDER, RecordKey, RecordUpdate, updates_for
from sinks.writer import CollectionWriter
from tests.sinks.fakes import FENCE_FIELD, FakeCollections
from tests.sinks.helpers import committed_total, dead_letters, outcome, produce

T1 = dt.datetime(2025, 3, 4, 5, 6, 7, 891000, tzinfo=dt.UTC)
T2 = T1 + dt.timedelta(milliseconds=1)  # one millisecond later: a DateTime field (seconds) would tie
OPP = RecordKey(OPPORTUNITY, "006000000000001AAA")


def provisioned(order_id: str, at: dt.datetime, service: int) -> dict:
    return {"order_id": order_id, "opportunity_id": OPP.record_id, "status": "Provisioned",
            "whmcs_order_id": service, "whmcs_service_ids": [service], "completed_at": at}


# -- mapping ---------------------------------------------------------------------------

def test_updates_carry_completed_at_as_version_and_in_the_fence_field() -> None:
    updates = updates_for(provisioned("801000000000001AAA", T1, 7), fence_field=FENCE_FIELD)
    assert [u.key.sobject for u in updates] == [ORDER, OPPORTUNITY]
    for update in updates:
        assert update.version == epoch_ms(T1) == 1741064767891
        assert update.fields[FENCE_FIELD] == 1741064767891
    failed = updates_for({"order_id": "801000000000001AAA", "status": "Failed",
                          "completed_at": T2}, fence_field=FENCE_FIELD)
    assert failed[0].fields[FENCE_FIELD] == 1741064767892


def test_fence_off_writes_no_field_but_still_versions() -> None:
    [order, opp] = updates_for(provisioned("801000000000001AAA", T1, 7))
    assert FENCE_FIELD not in order.fields and FENCE_FIELD not in opp.fields
    assert order.version == opp.version == epoch_ms(T1)


def test_epoch_ms_is_exact_for_datetimes_and_numbers() -> None:
    assert epoch_ms(dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) == 0
    assert epoch_ms(dt.datetime(2286, 11, 20, 17, 46, 39, 999000, tzinfo=dt.UTC)) == \
        9_999_999_999_999
    assert epoch_ms(dt.datetime(2025, 1, 1)) == epoch_ms(dt.datetime(2025, 1, 1, tzinfo=dt.UTC))
    assert epoch_ms(1_700_000_000_123) == 1_700_000_000_123


# -- merging in version order --------------------------------------------------------

def test_an_older_update_arriving_later_is_not_merged_under_the_newer() -> None:
    """One Opportunity, two Orders on different partitions: the newer outcome (service 2)
    arrives first, the older one (service 1, and a field the newer does not set) later.
    Merged under the newer, the older's field would pass the fence with the newer version;
    it stays a separate update, sent first, judged against its own version."""
    batcher = Batcher()
    newer, older = Tracked(3, 0, b"k", b"v"), Tracked(1, 0, b"k", b"v")
    batcher.add(newer, [RecordUpdate(OPP, {"StageName": "Active", "WHMCS_Service_ID__c": 2,
                                           FENCE_FIELD: 2000}, 2000)], now=0)
    batcher.add(older, [RecordUpdate(OPP, {"StageName": "Active", "WHMCS_Service_ID__c": 1,
                                           "Extra__c": "only in the older",
                                           FENCE_FIELD: 1000}, 1000)], now=1)
    assert len(batcher) == 2
    [first] = batcher.take(now=2, limit=200)  # one entry of a record per call
    assert first.fields == {"StageName": "Active", "WHMCS_Service_ID__c": 1,
                            "Extra__c": "only in the older", FENCE_FIELD: 1000}
    assert first.version == 1000 and first.sources == [older]
    assert batcher.take(now=2, limit=200) == []  # the newer waits until the older settled
    assert batcher.ack(first) == [older]
    [then] = batcher.take(now=2, limit=200)
    assert then.fields == {"StageName": "Active", "WHMCS_Service_ID__c": 2, FENCE_FIELD: 2000}
    assert then.sources == [newer]


def test_an_older_update_the_newer_covers_merges_into_it() -> None:
    """Writing the older first could change nothing the newer does not set again: merged,
    the newer's fields and version, both outcomes settled by one write."""
    batcher = Batcher()
    newer, older = Tracked(3, 0, b"k", b"v"), Tracked(1, 0, b"k", b"v")
    batcher.add(newer, [RecordUpdate(OPP, {"StageName": "Active", "WHMCS_Service_ID__c": 2,
                                           FENCE_FIELD: 2000}, 2000)], now=0)
    batcher.add(older, [RecordUpdate(OPP, {"StageName": "Active", "WHMCS_Service_ID__c": 1,
                                           FENCE_FIELD: 1000}, 1000)], now=1)
    [entry] = batcher.take(now=2, limit=200)
    assert entry.fields == {"StageName": "Active", "WHMCS_Service_ID__c": 2, FENCE_FIELD: 2000}
    assert entry.version == 2000 and set(entry.sources) == {older, newer}
    assert len(batcher) == 0


def test_a_newer_update_that_leaves_out_a_field_of_a_pending_older_one_stays_apart() -> None:
    """Failed→Provisioned of one Order merges (Provisioned sets every field Failed sets);
    an Opportunity update without a service id after one with it does not."""
    order = RecordKey(ORDER, "801000000000001AAA")
    batcher = Batcher()
    for i, (status, at) in enumerate((("Failed", T1), ("Provisioned", T2))):
        record = {**provisioned(order.record_id, at, 7), "status": status,
                  "error_code": "X", "error_message": "y"}
        batcher.add(Tracked(0, i, None, None), [u for u in updates_for(
            record, fence_field=FENCE_FIELD) if u.key == order], now=i)
    [entry] = batcher.take(now=5, limit=200)
    assert entry.fields["Activation_Status__c"] == "Provisioned" and len(entry.sources) == 2
    with_id = updates_for(provisioned("801A", T1, 100), fence_field=FENCE_FIELD)[1]
    without = updates_for({**provisioned("801B", T2, 0), "whmcs_service_ids": []},
                          fence_field=FENCE_FIELD)[1]
    assert "WHMCS_Service_ID__c" not in without.fields
    batcher.add(Tracked(0, 2, None, None), [with_id], now=6)
    batcher.add(Tracked(1, 0, None, None), [without], now=7)
    assert len(batcher) == 2 and [e.version for e in batcher.take(now=8, limit=200)] == \
        [epoch_ms(T1)]


def test_an_older_outcome_merged_with_a_newer_one_cannot_pass_the_fence() -> None:
    """The reviewer's sequence: B (v2, service 200) written; then C (v3, Provisioned without
    a service id) and, late from a lagging partition, A (v1, service 100). Merged, A's
    service id passed the fence with C's version and the Opportunity ended on 100."""
    def outcome_at(order: str, ms: int, services: list[int]) -> dict:
        return {"order_id": order, "opportunity_id": OPP.record_id, "status": "Provisioned",
                "whmcs_order_id": 1, "whmcs_service_ids": services,
                "completed_at": dt.datetime.fromtimestamp(ms / 1000, dt.UTC)}

    fake = FakeCollections()
    writer = CollectionWriter(fake)
    batcher = Batcher()
    b, c, a = Tracked(1, 0, None, None), Tracked(2, 0, None, None), Tracked(0, 0, None, None)
    batcher.add(b, updates_for(outcome_at("801000000000002AAA", 2000, [200]),
                               fence_field=FENCE_FIELD), now=0)
    result = writer.write(batcher.take(now=1, limit=200))
    assert len(result.acked) == 2
    for entry in result.acked:
        batcher.ack(entry)
    batcher.add(c, updates_for(outcome_at("801000000000003AAA", 3000, []),
                               fence_field=FENCE_FIELD), now=2)
    batcher.add(a, updates_for(outcome_at("801000000000001AAA", 1000, [100]),
                               fence_field=FENCE_FIELD), now=2)
    superseded = []
    for _ in range(5):  # as the sink does: write, settle, write what became sendable
        entries = batcher.take(now=3, limit=200)
        if not entries:
            break
        result = writer.write(entries)
        assert not result.permanent and not result.transient
        superseded += [entry for entry, _error in result.superseded]
        for entry in result.acked + superseded:
            batcher.ack(entry)
    assert len(batcher) == 0 and a.complete and c.complete
    assert fake.records[(OPPORTUNITY, OPP.record_id)] == {
        "StageName": "Active", "WHMCS_Service_ID__c": 200, FENCE_FIELD: 3000}
    assert [e.sources for e in superseded] == [[a]]  # A's update refused: B holds newer


def test_equal_versions_merge_in_arrival_order() -> None:
    batcher = Batcher()
    batcher.add(Tracked(0, 0, None, None), [RecordUpdate(OPP, {"a": 1}, 5)], now=0)
    batcher.add(Tracked(0, 1, None, None), [RecordUpdate(OPP, {"a": 2}, 5)], now=0)
    assert batcher.take(now=0, limit=1)[0].fields == {"a": 2}


def test_a_retried_entry_keeps_its_newer_fields_over_an_older_arrival() -> None:
    batcher = Batcher()
    batcher.add(Tracked(0, 0, None, None), [RecordUpdate(OPP, {"s": "new"}, 20)], now=0)
    [taken] = batcher.take(now=0, limit=200)
    batcher.add(Tracked(1, 0, None, None), [RecordUpdate(OPP, {"s": "old"}, 10)], now=1)
    batcher.retry(taken, not_before=0)
    [entry] = batcher.take(now=2, limit=200)
    assert entry.fields == {"s": "new"} and entry.version == 20 and len(entry.sources) == 2
    batcher.add(Tracked(2, 0, None, None), [RecordUpdate(OPP, {"s": "newest"}, 30)], now=3)
    batcher.retry(entry, not_before=0)
    assert batcher.take(now=4, limit=200)[0].fields == {"s": "newest"}


# -- the rule's refusal ------------------------------------------------------------------

def test_superseded_is_the_rule_refusal_only() -> None:
    assert is_superseded("FIELD_CUSTOM_VALIDATION_EXCEPTION", RULE_MESSAGE)
    assert not is_superseded("FIELD_CUSTOM_VALIDATION_EXCEPTION",
                             "Injected validation rule: this record cannot be saved")
    assert not is_superseded("INVALID_FIELD", RULE_MESSAGE)


def test_the_sandbox_org_speaks_the_sinks_marker() -> None:
    assert validation.SUPERSEDED_MESSAGE == RULE_MESSAGE
    assert validation.OUTCOME_MS_FIELD == SinkSettings.load({}).outcome_ms_field == FENCE_FIELD


def entries_for(updates: list[RecordUpdate]) -> list:
    batcher = Batcher()
    for i, update in enumerate(updates):
        batcher.add(Tracked(0, i, None, None), [update], now=i)
    return batcher.take(now=len(updates), limit=10_000)


def test_writer_sorts_the_rule_refusal_as_superseded_not_permanent() -> None:
    fake = FakeCollections()
    fake.records[(ORDER, "801A")] = {FENCE_FIELD: 2000}
    fake.records[(ORDER, "801B")] = {FENCE_FIELD: 2000}
    fake.records[(ORDER, "801C")] = {FENCE_FIELD: 2000}
    fake.record_errors["801D"] = [{"statusCode": "FIELD_CUSTOM_VALIDATION_EXCEPTION",
                                   "message": "another rule of the org", "fields": []}]
    result = CollectionWriter(fake).write(entries_for([
        RecordUpdate(RecordKey(ORDER, "801A"), {"s": "old", FENCE_FIELD: 1000}, 1000),
        RecordUpdate(RecordKey(ORDER, "801B"), {"s": "same", FENCE_FIELD: 2000}, 2000),
        RecordUpdate(RecordKey(ORDER, "801C"), {"s": "new", FENCE_FIELD: 3000}, 3000),
        RecordUpdate(RecordKey(ORDER, "801D"), {"s": "x", FENCE_FIELD: 3000}, 3000)]))
    assert [(e.key.record_id, err.code, err.fields) for e, err in result.superseded] == \
        [("801A", "FIELD_CUSTOM_VALIDATION_EXCEPTION", (FENCE_FIELD,))]
    assert [e.key.record_id for e in result.acked] == ["801B", "801C"]
    assert [e.key.record_id for e, _err in result.permanent] == ["801D"]
    assert fake.records[(ORDER, "801A")] == {FENCE_FIELD: 2000}  # untouched


def test_superseded_wins_over_other_errors_of_the_same_record() -> None:
    fake = FakeCollections()
    fake.record_errors["801A"] = [
        {"statusCode": "UNABLE_TO_LOCK_ROW", "message": "locked"},
        {"statusCode": "STRING_TOO_LONG", "message": "too long"},
        {"statusCode": "FIELD_CUSTOM_VALIDATION_EXCEPTION", "message": RULE_MESSAGE}]
    result = CollectionWriter(fake).write(entries_for(
        [RecordUpdate(RecordKey(ORDER, "801A"), {"s": 1}, 1)]))
    assert len(result.superseded) == 1 and not result.permanent and not result.transient


# -- start-up check of the field -----------------------------------------------------

def test_check_field_passes_on_an_updatable_number_field() -> None:
    fake = FakeCollections()
    check_field(fake, FENCE_FIELD.lower())  # API names are case-insensitive
    assert fake.describes == [ORDER, OPPORTUNITY]


@pytest.mark.parametrize(("sobject", "entry", "problem"), [
    (OPPORTUNITY, None, "Opportunity.Activation_Outcome_Ms__c does not exist in the org"),
    (ORDER, {"name": FENCE_FIELD, "type": "datetime", "updateable": True},
     "Order.Activation_Outcome_Ms__c is of type datetime"),
    (ORDER, {"name": FENCE_FIELD, "type": "double", "updateable": False, "precision": 18,
             "scale": 0}, "Order.Activation_Outcome_Ms__c is not updatable"),
    # epoch milliseconds have 13 digits: a Number(10, 0) passed, then every write failed
    # (NUMBER_OUTSIDE_VALID_RANGE) and was dead-lettered
    (OPPORTUNITY, {"name": FENCE_FIELD, "type": "double", "updateable": True, "precision": 10,
                   "scale": 0}, "Opportunity.Activation_Outcome_Ms__c is Number(10, 0)"),
    (ORDER, {"name": FENCE_FIELD, "type": "double", "updateable": True, "precision": 16,
             "scale": 4}, "is Number(12, 4)"),  # describe's precision counts all digits
])
def test_check_field_names_what_is_missing(sobject: str, entry: dict | None,
                                           problem: str) -> None:
    fake = FakeCollections()
    if entry is None:
        del fake.fields[sobject][FENCE_FIELD]
    else:
        fake.fields[sobject][FENCE_FIELD] = entry
    with pytest.raises(ConfigError) as info:
        check_field(fake, FENCE_FIELD)
    message = str(info.value)
    assert message.startswith("SINK_OUTCOME_MS_FIELD: ") and problem in message
    assert "SINK_OUTCOME_FENCE=false" in message and "\n" not in message


def test_check_field_names_the_size_epoch_ms_needs() -> None:
    fake = FakeCollections()
    fake.fields[ORDER][FENCE_FIELD].update(precision=12, scale=0)
    with pytest.raises(ConfigError) as info:
        check_field(fake, FENCE_FIELD)
    assert "13 digits" in str(info.value) and "Number(18, 0)" in str(info.value)
    for precision, scale in ((13, 0), (18, 0), (18, 2)):  # 13+ digits left of the point
        fake.fields[ORDER][FENCE_FIELD].update(precision=precision, scale=scale)
        check_field(fake, FENCE_FIELD)


def test_the_sandbox_describes_the_field_as_a_number_18_0(tmp_path: Path) -> None:
    """The Salesforce sandbox's describe reports precision and scale as the org does, so the
    sink's check passes against it (and the e2e stacks start)."""
    from sandbox.salesforce import rest
    from sandbox.salesforce.core import Config, Sandbox

    username = "integration@sfprov.sandbox"
    sb = Sandbox(Config(db_path=str(tmp_path / "sf.db"), client_id="x", username=username,
                        jwt_cert_pem=b""))

    class Describer:
        def describe(self, sobject: str) -> dict:
            with sb.store.transaction() as tx:
                return rest.call(sb, sb.users[username], "62.0", "GET",
                                 f"sobjects/{sobject}/describe", {}, None, tx, {})[1]

    for name in (ORDER, OPPORTUNITY):
        [field] = [f for f in Describer().describe(name)["fields"] if f["name"] == FENCE_FIELD]
        assert (field["type"], field["precision"], field["scale"]) == ("double", 18, 0)
    check_field(Describer(), FENCE_FIELD)


def test_check_field_keeps_salesforce_outages_retryable() -> None:
    fake = FakeCollections()

    def down(_sobject: str) -> dict:
        raise SalesforceLimitError("limit", error_code="REQUEST_LIMIT_EXCEEDED")

    fake.describe = down  # type: ignore[method-assign]
    with pytest.raises(SalesforceLimitError):
        check_field(fake, FENCE_FIELD)

    def refused(_sobject: str) -> dict:
        raise SalesforceError("Salesforce 404 NOT_FOUND", error_code="NOT_FOUND",
                              retryable=False)

    fake.describe = refused  # type: ignore[method-assign]
    with pytest.raises(SalesforceError, match="SF_API_VERSION") as raised:
        check_field(fake, FENCE_FIELD)  # the installation's, not the field's: the sink pauses
    assert "SINK_OUTCOME_MS_FIELD" not in str(raised.value)


@pytest.mark.parametrize("error", [
    SalesforceAuthError("JWT bearer login refused: invalid_grant: user is inactive",
                        error_code="invalid_grant", status=400, retryable=False),
    SalesforceError("Salesforce 403 INSUFFICIENT_ACCESS", error_code="INSUFFICIENT_ACCESS",
                    status=403, retryable=False),
])
def test_a_refusal_of_the_sink_is_not_blamed_on_the_fence_setting(error: Exception) -> None:
    """A refused login at start-up once became ``ConfigError: SINK_OUTCOME_MS_FIELD: cannot
    describe Order …`` — exit 64, never restarted — where the README promises a pause."""
    fake = FakeCollections()

    def refused(_sobject: str) -> dict:
        raise error

    fake.describe = refused  # type: ignore[method-assign]
    with pytest.raises(type(error)):
        check_field(fake, FENCE_FIELD)
    assert start_check(fake, FENCE_FIELD) is True  # checked again before the first write


def test_settings_switch_the_fence_and_check_the_name() -> None:
    assert SinkSettings.load({}).fence_field == "Activation_Outcome_Ms__c"
    assert SinkSettings.load({"SINK_OUTCOME_FENCE": "false"}).fence_field is None
    assert SinkSettings.load({"SINK_OUTCOME_MS_FIELD": "Outcome_Ms__c"}).fence_field == \
        "Outcome_Ms__c"
    with pytest.raises(ConfigError, match="^SINK_OUTCOME_MS_FIELD: "):
        SinkSettings.load({"SINK_OUTCOME_MS_FIELD": "Outcome Ms"})


def test_readme_gives_the_rule_exactly() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert rule_formula(FENCE_FIELD) in readme
    assert RULE_MESSAGE in readme and f"`{RULE_NAME}`" in readme
    assert [r.name for r in validation.RULES] == [RULE_NAME]  # the sandbox's org has it
    assert "Number(18, 0)" in readme


def kafka_free_sink(fake: FakeCollections, **settings: object) -> Sink:
    kafka = KafkaSettings.load({}, bootstrap_servers="127.0.0.1:9")  # never reached
    return Sink(kafka, SinkSettings.load({}, http_port=0, **settings), fake)


def test_sink_stops_before_consuming_when_the_org_lacks_the_field() -> None:
    fake = FakeCollections()
    del fake.fields[ORDER][FENCE_FIELD]
    with pytest.raises(ConfigError, match="Order.Activation_Outcome_Ms__c does not exist"):
        kafka_free_sink(fake).run(timeout=5)
    assert not fake.calls


def test_sink_with_the_fence_off_asks_nothing_and_warns(caplog: pytest.LogCaptureFixture
                                                        ) -> None:
    fake = FakeCollections()
    sink = kafka_free_sink(fake, outcome_fence=False)
    sink.stop()
    with caplog.at_level("WARNING", logger="sinks.fence"):
        sink.run(timeout=5)
    assert fake.describes == []
    assert "SINK_OUTCOME_FENCE is off" in caplog.text


# -- the loop on the real broker -------------------------------------------------------

@pytest.mark.broker
def test_superseded_records_are_counted_committed_and_not_dead_lettered(
        kafka_settings: KafkaSettings) -> None:
    """Salesforce already holds newer outcomes for half the Orders (another sink wrote
    them): the stale ones are refused per record and settled; the rest are written."""
    now = dt.datetime.now(dt.UTC)
    records = [outcome(f"801{i:015d}", "Failed", n=i, completed_at=now) for i in range(40)]
    fake = FakeCollections()
    newer = epoch_ms(now) + 60_000
    for record in records[::2]:
        fake.records[(ORDER, record["order_id"])] = {"Activation_Status__c": "Provisioned",
                                                     FENCE_FIELD: newer}
    produce(kafka_settings, records)
    settings = SinkSettings.load({}, linger_s=0.05, http_port=0, session_timeout_ms=6000)
    sink = Sink(kafka_settings, settings, fake)
    stats = sink.run(timeout=60, exit_when_idle=True)
    assert stats.consumed == 40 and stats.superseded == 20 and stats.records_written == 20
    assert sink.health()[1]["superseded"] == 20
    for i, record in enumerate(records):
        stored = fake.records[(ORDER, record["order_id"])]
        assert stored["Activation_Status__c"] == ("Provisioned" if i % 2 == 0 else "Failed")
        assert stored[FENCE_FIELD] == (newer if i % 2 == 0 else epoch_ms(now))
    assert committed_total(kafka_settings, settings) == 40
    assert dead_letters(kafka_settings, expected=0, timeout=2) == []
    # each record sent once: nothing retried (the 40 records may come in more than one
    # poll, and so more than one PATCH, on a busy box: CI once saw two)
    sent = [r["id"] for call in fake.calls for r in call]
    assert sorted(sent) == sorted(r["order_id"] for r in records), sent
    assert fake.describes == [ORDER, OPPORTUNITY]


@pytest.mark.broker
@pytest.mark.parametrize("failure", ["outage", "login refused"])
def test_check_postponed_by_an_outage_is_made_before_the_first_write(
        kafka_settings: KafkaSettings, failure: str) -> None:
    """Salesforce down, or refusing the sink's login (a certificate rotated, the user
    frozen), at start-up: the check waits, and is made before the first write."""
    produce(kafka_settings, [outcome("801000000000000001", "Failed")])
    fake = FakeCollections()
    real_describe = fake.describe
    outage = threading.Event()
    outage.set()

    def describe(sobject: str) -> dict:
        if outage.is_set():
            outage.clear()  # only the start-up check meets the outage
            if failure == "outage":
                raise SalesforceError("Salesforce 503", status=503, retryable=True)
            raise SalesforceAuthError("JWT bearer login refused: invalid_grant: user is "
                                      "inactive", error_code="invalid_grant", status=400,
                                      retryable=False)
        return real_describe(sobject)

    fake.describe = describe  # type: ignore[method-assign]
    settings = SinkSettings.load({}, linger_s=0.05, http_port=0, session_timeout_ms=6000,
                                 retry_backoff_s=0.05)
    stats = Sink(kafka_settings, settings, fake).run(timeout=60, exit_when_idle=True)
    assert stats.records_written == 1
    assert fake.describes == [ORDER, OPPORTUNITY]  # checked, then written
