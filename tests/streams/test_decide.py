"""streams.decide: the pure decision for one event, given the Order's stored state (written
here as the tables store it, JSON) and the Order as Salesforce has it."""

import pytest

from streams import decide as decide_module
from streams.decide import (
    Event,
    Final,
    Provision,
    Redelivery,
    idem_key_of,
    outcome_record,
)
from streams.state import Intent, memory_from_json
from tests.streams.factories import ORDER_ID, order, request_value


def decide(ev, idem, intent, order_record, ctx=None):
    """decide() over the stored JSON of the Order's dedupe memory and intent."""
    return decide_module.decide(ev, memory_from_json(idem), Intent.from_json(intent),
                                order_record, ctx)


def event(**kw):
    return Event.from_request(request_value(**kw))


def test_event_from_request():
    ev = event()
    assert ev.order_id == ORDER_ID and ev.idem_key == f"{ORDER_ID}-1700000000000"
    assert ev.requested_at == 1_700_000_000_000 and ev.correlation_id == "corr-1"


def test_event_from_a_decoded_request_keeps_created_date_in_milliseconds():
    """What the worker reads: Avro's timestamp-millis decodes CreatedDate as an aware
    datetime (the factory's int never exercised that path)."""
    from datetime import datetime

    from common.avro import AvroSerde

    serde = AvroSerde("provision_request")
    value = request_value()
    value["CreatedDate"] = 1_700_000_000_123
    decoded = serde.decode(serde.encode(value), serde.headers())
    assert isinstance(decoded["CreatedDate"], datetime)
    assert Event.from_request(decoded).requested_at == 1_700_000_000_123


def test_missing_idem_key_falls_back_to_event_uuid():
    value = request_value()
    value["IdemKey__c"] = None
    assert idem_key_of(value) == f"{ORDER_ID}-event-uuid-1"


def test_activating_order_is_provisioned():
    d = decide(event(), None, None, order())
    assert isinstance(d, Provision) and not d.lookup_first and d.request.client_id == 1001


def test_same_idem_key_other_event_is_duplicate():
    ev = event(event_uuid="uuid-2")
    idem = {ev.idem_key: {"event_uuid": "uuid-1", "status": "Provisioned"}}
    d = decide(ev, idem, None, order())
    assert isinstance(d, Final) and d.status == "Duplicate" and d.error_code == "DUPLICATE_IDEM_KEY"


def test_same_event_again_is_a_redelivery_with_the_stored_outcome():
    ev = event()
    stored = {"status": "Provisioned", "completed_at": 5}
    idem = {ev.idem_key: {"event_uuid": "uuid-1", "outcome": stored, "emitted": False}}
    d = decide(ev, idem, None, order(status="Provisioned"))
    assert d == Redelivery(stored, False)


def test_redelivered_duplicate_uses_its_own_stored_outcome():
    ev = event(event_uuid="uuid-2")
    dup = {"status": "Duplicate"}
    idem = {ev.idem_key: {"event_uuid": "uuid-1", "outcome": {"status": "Provisioned"},
                          "dups": {"uuid-2": {"outcome": dup, "emitted": True}}}}
    assert decide(ev, idem, None, order()) == Redelivery(dup, True)


def test_guard_skips():
    d = decide(event(), None, None, order(status="Failed"))
    assert isinstance(d, Final) and (d.status, d.error_code) == ("Skipped", "NOT_ACTIVATING")
    d = decide(event(), None, None, order(whmcs_order_id=77.0))
    assert (d.status, d.error_code, d.whmcs_order_id) == ("Skipped", "ALREADY_PROVISIONED", 77)
    d = decide(event(), None, None, None)
    assert (d.status, d.error_code) == ("Failed", "ORDER_NOT_FOUND")


@pytest.mark.parametrize("state", ["accepted", "failed"])
def test_decided_intent_of_this_very_event_is_a_redelivery_of_its_outcome(state):
    """The dedupe entry is missing (a lost table restore): the intent's outcome is sent
    again — never a contradicting Skipped(ALREADY_PROVISIONED)."""
    ev = event()
    stored = {"status": "Provisioned" if state == "accepted" else "Failed", "completed_at": 7}
    intent = {"state": state, "whmcs_order_id": 9, "idem_key": ev.idem_key,
              "event_uuid": ev.event_uuid, "outcome": stored}
    assert decide(ev, None, intent, order(whmcs_order_id=9.0)) == Redelivery(
        stored, False, restore=True)
    # another event of the same IdemKey, or a later IdemKey, is not this event
    other = event(event_uuid="uuid-2")
    assert not isinstance(decide(other, None, intent, order()), Redelivery)


def test_accepted_intent_of_an_earlier_event_skips():
    intent = {"state": "accepted", "whmcs_order_id": 9, "idem_key": "old"}
    d = decide(event(), None, intent, order())
    assert (d.status, d.error_code, d.whmcs_order_id) == ("Skipped", "ALREADY_PROVISIONED", 9)


def test_pending_intent_looks_up_first_and_the_guard_decides_only_if_nothing_is_found():
    """Salesforce moved on since the attempt: the lookup still comes first (an order found
    is the outcome), and the guard's verdict travels with it for a lookup that finds
    nothing — then no AddOrder."""
    intent = {"state": "pending", "attempt": 1, "at": 123, "idem_key": "x"}
    d = decide(event(), None, intent, order(status="Provisioned", whmcs_order_id=5))
    assert isinstance(d, Provision) and d.lookup_first and d.resumed
    assert d.sends_until == 123 and d.previous_attempts == 1  # an intent from before leases
    assert d.refused == Final("Skipped", "ALREADY_PROVISIONED",
                              "Order already has WHMCS_Order_Id__c 5", whmcs_order_id=5)
    d = decide(event(), None, intent, order(status="Pending Review"))
    assert isinstance(d, Provision) and d.lookup_first
    assert (d.refused.status, d.refused.error_code) == ("Skipped", "NOT_ACTIVATING")
    assert decide(event(), None, intent, order()).refused is None  # still Activating
    # nothing to map either: the guard's verdict first (the handler looks up before it)
    d = decide(event(), None, intent, order(client=None, status="Pending Review"))
    assert isinstance(d, Final) and (d.status, d.error_code) == ("Skipped", "NOT_ACTIVATING")


def test_pending_intent_with_a_lease_is_looked_up_after_it():
    intent = {"state": "pending", "attempt": 2, "at": 123, "lease_until": 9_000,
              "idem_key": "x", "writer": "other"}
    d = decide(event(), None, intent, order())
    assert isinstance(d, Provision) and d.lookup_first and d.resumed
    assert d.sends_until == 9_000 and d.previous_attempts == 2


def test_failed_intent_that_may_exist_looks_first():
    intent = {"state": "failed", "may_exist": True, "attempt": 2, "at": 1}
    d = decide(event(event_uuid="u9", idem_key="new-key"), None, intent, order())
    assert isinstance(d, Provision) and d.lookup_first and not d.resumed
    clean = {"state": "failed", "may_exist": False, "attempt": 1}
    assert not decide(event(idem_key="k3"), None, clean, order()).lookup_first


def test_a_lookup_owed_to_an_earlier_attempt_names_the_client_it_sent_to():
    """The Account's WHMCS client changed after an attempt whose AddOrder may have landed:
    the lookup must read the client that attempt sent to as well."""
    intent = {"state": "failed", "may_exist": True, "attempt": 1, "at": 1, "client_id": 1010}
    moved = decide(event(idem_key="k4"), None, intent, order(client="1020"))
    assert isinstance(moved, Provision) and moved.lookup_first
    assert (moved.request.client_id, moved.earlier_client_ids) == (1020, (1010,))
    same = decide(event(idem_key="k5"), None, intent, order(client="1010"))
    assert isinstance(same, Provision) and same.earlier_client_ids == ()
    clean = {**intent, "may_exist": False}
    assert decide(event(idem_key="k6"), None, clean, order(client="1020")) \
        .earlier_client_ids == ()  # nothing may exist: nothing to look for


def test_the_earlier_client_survives_an_attempt_that_did_not_finish_its_lookup():
    """The intent of the attempt that owed the lookup names the new client; it carries the
    earlier one on, so the attempt after it (resumed after a crash, or retried after a
    lookup that failed past the deadline) still reads both."""
    first = {"state": "failed", "may_exist": True, "attempt": 1, "at": 1, "client_id": 1010}
    second = decide(event(idem_key="k7"), None, first, order(client="1020"))
    assert isinstance(second, Provision) and second.earlier_client_ids == (1010,)
    pending = Intent.pending(order_id=ORDER_ID, idem_key="k7", event_uuid="u7", attempt=2,
                             client_id=1020, at=2, writer="w", lease_until=3,
                             earlier_client_ids=second.earlier_client_ids)
    stored = pending.to_json()  # as the changelog holds it
    resumed = decide(event(idem_key="k7", event_uuid="u7"), None, stored, order(client="1020"))
    assert isinstance(resumed, Provision) and resumed.resumed
    assert resumed.earlier_client_ids == (1010,)
    failed = pending.settled({"status": "Failed", "error_code": "WHMCS_UNAVAILABLE"}, 4,
                             may_exist=True).to_json()
    third = decide(event(idem_key="k8"), None, failed, order(client="1030"))
    assert isinstance(third, Provision) and third.earlier_client_ids == (1010, 1020)


def test_mapping_failure_becomes_failed_outcome():
    d = decide(event(), None, None, order(client=None))
    assert (d.status, d.error_code) == ("Failed", "MISSING_WHMCS_CLIENT")


def test_outcome_record_is_valid_avro():
    from common.avro import AvroSerde

    serde = AvroSerde("provisioning_outcome")
    rec = outcome_record(event(), "Provisioned", whmcs_order_id=5, service_ids=[1, 2],
                         attempts=1, completed_at=10)
    assert serde.decode(serde.encode(rec))["whmcs_service_ids"] == [1, 2]


def test_outcome_record_carries_duplicates_and_bounds_the_error_message():
    from common.avro import AvroSerde

    serde = AvroSerde("provisioning_outcome")
    rec = outcome_record(event(), "Provisioned", whmcs_order_id=5, duplicate_ids=[7, 8],
                         error_message="x" * 1500, completed_at=10)
    decoded = serde.decode(serde.encode(rec))
    assert decoded["duplicate_whmcs_order_ids"] == [7, 8]
    assert decoded["error_message"] == "x" * 1000
    assert decoded["requested_at"].timestamp() == 1_700_000_000  # timestamp-millis
    assert outcome_record(event(), "Provisioned", error_message="",
                          completed_at=10)["error_message"] is None


@pytest.mark.parametrize("bad", ["   ", "801' OR Name != '", "801" + "9" * 500, "801x"])
def test_event_refuses_an_order_id_that_is_not_a_salesforce_id(bad):
    with pytest.raises(ValueError, match="is empty|not a 15- or 18-character Salesforce id"):
        Event.from_request(request_value(bad))


def test_reconcile_reads_idem_keys_as_the_worker_does():
    from common.reconcile import idem_key_of as reconcile_idem_key_of
    from streams.decide import idem_key_of

    for value in ({"IdemKey__c": "801-1", "OrderId__c": "801", "event_uuid": "u"},
                  {"IdemKey__c": None, "OrderId__c": "801", "event_uuid": "u"}):
        assert reconcile_idem_key_of(value) == idem_key_of(value)


def test_intent_json_holds_every_field_and_reads_back():
    """Intent.to_json is written by hand (asdict's deep copy was in the profile): a field
    added to the dataclass must be added there too, or it would not survive a restart."""
    import dataclasses


    pending = Intent.pending(order_id="801A", idem_key="k", event_uuid="u", attempt=2,
                             client_id=7, at=5, writer="w1", lease_until=9,
                             correlation_id="c", requested_at=3, opportunity_id="006A")
    settled = pending.renewed(11).settled({"status": "Provisioned", "whmcs_order_id": 42}, 12)
    for intent in (pending, dataclasses.replace(settled, earlier_client_ids=(1010, 1020))):
        expected = dataclasses.asdict(intent)
        expected["earlier_client_ids"] = list(intent.earlier_client_ids)  # JSON has lists
        assert intent.to_json() == expected
        assert Intent.from_json(intent.to_json()) == intent
    assert settled.to_json()["outcome"] is not settled.outcome  # a copy, as asdict made


def test_the_state_values_changes_are_what_dataclasses_replace_gives():
    """Intent and DedupeEntry change by ``_evolve`` (a copy of the fields, without the frozen
    ``__init__``): equal to ``dataclasses.replace`` for every change they make, still
    frozen, and the original untouched."""
    import dataclasses

    from streams.state import DedupeEntry

    pending = Intent.pending(order_id="801A", idem_key="k", event_uuid="u", attempt=2,
                             client_id=7, at=5, writer="w1", lease_until=9)
    outcome = {"status": "Failed", "whmcs_order_id": None}
    assert pending.renewed(11) == dataclasses.replace(pending, lease_until=11)
    settled = pending.settled(outcome, 12, may_exist=True)
    assert settled == dataclasses.replace(pending, state="failed", outcome=outcome,
                                          whmcs_order_id=None, at=12, may_exist=True)
    assert pending.lease_until == 9 and pending.outcome is None
    entry = DedupeEntry.first("u", {"status": "Provisioned"}, 5)
    assert entry.marked_emitted("u") == dataclasses.replace(entry, emitted=True)
    twice = entry.with_duplicate("u2", {"status": "Duplicate"}, 7)
    assert twice == dataclasses.replace(entry, dups={"u2": twice.dups["u2"]}, last_at=7)
    assert twice.marked_emitted("u2").dups["u2"].emitted and not entry.dups
    with pytest.raises(dataclasses.FrozenInstanceError):
        settled.at = 1  # type: ignore[misc]
    assert type(settled) is Intent and dataclasses.fields(settled) == dataclasses.fields(pending)


def test_requested_at_is_the_events_created_date_to_the_millisecond():
    """fastavro decodes timestamp-millis to a datetime; ``int(timestamp() * 1000)`` made
    2038-01-19T03:14:08.127Z 1 ms low (the float lands just under the millisecond), so an
    outcome's requested_at no longer equalled its event's CreatedDate."""
    from common.avro import AvroSerde

    serde = AvroSerde("provision_request")
    for ms in (1738314900123, 2147483648127, 2200000000001):
        rec = {"event_uuid": "u", "replay_id": b"", "schema_id": "s", "channel": "c",
               "received_at": ms, "CreatedDate": ms, "CreatedById": "x",
               "OrderId__c": "801xx000003DGbqAAG"}
        decoded = serde.decode(serde.encode(rec), serde.headers())
        assert Event.from_request(decoded).requested_at == ms
