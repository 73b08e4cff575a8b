"""The consumer loop on the real broker, with an in-memory Salesforce (fast, in-process).

The same scenarios against the Salesforce sandbox, with the sink as a subprocess, are in
``test_sink_sandbox.py``.
"""

from __future__ import annotations

import threading
import time

import pytest

from common.avro import epoch_ms
from common.settings import KafkaSettings, SinkSettings
from sinks.app import Sink
from tests.sinks.fakes import FakeCollections, limit_error
from tests.sinks.helpers import STATUSES, committed_total, dead_letters, outcome, produce

pytestmark = pytest.mark.broker


def sink_settings(**overrides: object) -> SinkSettings:
    base = {"linger_s": 0.05, "http_port": 0, "retry_backoff_s": 0.05,
            "limit_backoff_s": 0.5, "session_timeout_ms": 6000}
    base.update(overrides)
    return SinkSettings.load({}, **base)


def scenario(n: int) -> list[dict]:
    return [outcome(f"801{i:015d}", STATUSES[i % len(STATUSES)],
                    opportunity_id=f"006{i:015d}" if i % 3 else None, n=i) for i in range(n)]


def test_outcomes_are_written_batched_and_committed(kafka_settings: KafkaSettings) -> None:
    records = scenario(300)
    produce(kafka_settings, records)
    fake = FakeCollections()
    settings = sink_settings()
    stats = Sink(kafka_settings, settings, fake).run(timeout=60, exit_when_idle=True)
    assert stats.consumed == 300
    for i, rec in enumerate(records):
        stored = fake.records.get(("Order", rec["order_id"]))
        if rec["status"] == "Provisioned":
            assert stored["Activation_Status__c"] == "Provisioned", i
            assert stored["WHMCS_Order_Id__c"] == rec["whmcs_order_id"]
            if rec["opportunity_id"]:
                assert fake.records[("Opportunity", rec["opportunity_id"])] == {
                    "StageName": "Active", "WHMCS_Service_ID__c": rec["whmcs_service_ids"][0],
                    "Activation_Outcome_Ms__c": epoch_ms(rec["completed_at"])}
        elif rec["status"] == "Failed":
            assert stored["Activation_Status__c"] == "Failed"
            assert stored["Activation_Error__c"] == f"WHMCS_ERROR: order {i} refused"
        else:
            assert stored is None
    written = sum(len(c) for c in fake.calls)
    assert written == len(fake.records)
    assert len(fake.calls) <= -(-written // 200) + 3
    assert committed_total(kafka_settings, settings) == 300


def test_later_outcome_of_the_same_order_wins(kafka_settings: KafkaSettings) -> None:
    order = "801000000000000042"
    produce(kafka_settings, [outcome(order, "Failed", n=1), outcome(order, "Provisioned", n=2),
                             outcome(order, "Failed", n=3, error_message="final")])
    fake = FakeCollections()
    Sink(kafka_settings, sink_settings(linger_s=0.5), fake).run(timeout=30, exit_when_idle=True)
    stored = fake.records[("Order", order)]
    assert stored["Activation_Status__c"] == "Failed"
    assert stored["Activation_Error__c"] == "WHMCS_ERROR: final"
    assert stored["WHMCS_Order_Id__c"] == 1002  # from the Provisioned outcome, not erased


def test_bad_records_are_dead_lettered_and_the_rest_proceeds(
        kafka_settings: KafkaSettings) -> None:
    records = scenario(20)
    fake = FakeCollections()
    fake.record_errors[records[0]["order_id"]] = [
        {"statusCode": "ENTITY_IS_DELETED", "message": "entity is deleted", "fields": []}]
    fake.record_errors[records[1]["order_id"]] = [
        {"statusCode": "UNABLE_TO_LOCK_ROW", "message": "locked", "fields": []}]
    # a copy `sfprov dlq requeue` sent: its dead letter names the one it came from
    produce(kafka_settings, records, raw=[(b"garbage", b"\xff\x00not avro")],
            raw_headers=[("sfprov.requeued_from", b"dlq:0:9")])
    settings = sink_settings(max_attempts=3)
    Sink(kafka_settings, settings, fake).run(timeout=60, exit_when_idle=True)
    letters = dead_letters(kafka_settings, expected=3)
    by_order = {h.get("order_id", ""): (k, v, h) for k, v, h in letters}
    assert len(letters) == 3, [h for _k, _v, h in letters]
    deleted = by_order[records[0]["order_id"]][2]
    assert deleted["error_code"] == "ENTITY_IS_DELETED" and deleted["stage"] == "sink"
    assert "entity is deleted" in deleted["reason"] and deleted["source_offset"]
    locked = by_order[records[1]["order_id"]][2]
    assert locked["error_code"] == "UNABLE_TO_LOCK_ROW" and "3 attempts" in locked["reason"]
    garbage = by_order[""]
    assert garbage[0] == b"garbage" and garbage[2]["error_class"] == "SerdeError"
    assert garbage[2]["requeued_from"] == "dlq:0:9"
    assert "requeued_from" not in deleted
    # everything else written
    assert ("Order", records[2]["order_id"]) in fake.records
    assert committed_total(kafka_settings, settings) == 21


def limit_for(fake: FakeCollections, seconds: float) -> list[float]:
    """``fake`` answers REQUEST_LIMIT_EXCEEDED for ``seconds`` from its first call; the
    list holds when the limit lifts, once a call was made."""
    window: list[float] = []

    def limited(_records: list) -> Exception | None:
        if not window:
            window.append(time.monotonic() + seconds)
        return limit_error() if time.monotonic() < window[0] else None

    fake.fail_call = limited
    return window


def test_request_limit_pauses_then_catches_up(kafka_settings: KafkaSettings) -> None:
    produce(kafka_settings, scenario(100))
    fake = FakeCollections()
    window = limit_for(fake, 2.0)
    sink = Sink(kafka_settings, sink_settings(), fake)
    seen_paused: list[dict] = []

    def watch() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (window and time.monotonic() > window[0]):
            ok, details = sink.health()
            if details["paused"]:
                seen_paused.append(details)
            time.sleep(0.1)

    watcher = threading.Thread(target=watch)
    watcher.start()
    stats = sink.run(timeout=60, exit_when_idle=True)
    watcher.join()
    assert seen_paused and "REQUEST_LIMIT_EXCEEDED" in seen_paused[0]["pause_reasons"]
    assert stats.consumed == 100
    assert sum(1 for k in fake.records if k[0] == "Order") == 60  # Provisioned + Failed
    assert not sink.health()[1]["paused"]


def test_stop_drains_pending_writes_and_commits(kafka_settings: KafkaSettings) -> None:
    produce(kafka_settings, scenario(50))
    fake = FakeCollections()
    # nothing flushes on its own: no linger, and no idle flush (a slow broker can hand the 50
    # over in two fetches more than SINK_IDLE_FLUSH_S apart, which flushed the first part)
    settings = sink_settings(linger_s=30.0, idle_flush_s=0)
    sink = Sink(kafka_settings, settings, fake)
    calls_at_stop: list[int] = []

    def stop_when_consumed() -> None:
        # no assertion here: one raised in this thread is only a warning to pytest, and it
        # would skip the stop (the run then ends on its timeout and the test still passes)
        try:
            deadline = time.monotonic() + 30
            while sink.stats.consumed < 50 and time.monotonic() < deadline:
                time.sleep(0.05)
            calls_at_stop.append(len(fake.calls))
        finally:
            sink.stop()

    stopper = threading.Thread(target=stop_when_consumed)
    stopper.start()
    stats = sink.run(timeout=60)
    stopper.join()
    assert calls_at_stop == [0], f"writes made before the stop (not lingering): {calls_at_stop}"
    assert stats.consumed == 50 and len(fake.calls) == 1
    assert committed_total(kafka_settings, settings) == 50


def test_outage_pauses_without_losing_anything(kafka_settings: KafkaSettings) -> None:
    from common.errors import SalesforceError

    produce(kafka_settings, scenario(60))
    fake = FakeCollections()
    failures = iter(range(3))
    fake.fail_call = lambda _r: SalesforceError("Salesforce 503", status=503, retryable=True) \
        if next(failures, None) is not None else None
    sink = Sink(kafka_settings, sink_settings(), fake)
    stats = sink.run(timeout=60, exit_when_idle=True)
    assert stats.consumed == 60
    assert len(fake.calls) >= 4  # three refused, then the writes
    assert sum(1 for k in fake.records if k[0] == "Order") == 36
    assert committed_total(kafka_settings, sink.settings) == 60


def test_a_login_refused_mid_run_pauses_and_dead_letters_nothing(
        kafka_settings: KafkaSettings) -> None:
    """The sink's session ends and its login is refused (a certificate revoked, then put
    back): a refusal no record caused. The sink waits and retries; no outcome is failed."""
    from common.errors import SalesforceAuthError

    produce(kafka_settings, scenario(60))
    fake = FakeCollections()
    window: list[float] = []  # every login refused for 1.5 s from the first call

    def refused(_records: list) -> Exception | None:
        if not window:
            window.append(time.monotonic() + 1.5)
        return SalesforceAuthError("JWT bearer login refused: invalid_grant: invalid assertion",
                                   error_code="invalid_grant", status=400, retryable=False) \
            if time.monotonic() < window[0] else None

    fake.fail_call = refused
    sink = Sink(kafka_settings, sink_settings(), fake)
    stats = sink.run(timeout=60, exit_when_idle=True)
    assert stats.consumed == 60 and stats.dead_letters == 0
    assert dead_letters(kafka_settings, expected=1, timeout=3) == []
    assert len(fake.calls) >= 2  # refused, then the writes
    assert sum(1 for k in fake.records if k[0] == "Order") == 36
    assert committed_total(kafka_settings, sink.settings) == 60


def test_backpressure_of_one_pending_outcome_still_flows(kafka_settings: KafkaSettings) -> None:
    """``SINK_MAX_PENDING=1``: paused at each outcome, resumed once it is written (the
    resume threshold, half of the limit, is 0 here: "at most 0 outstanding", not "fewer")."""
    produce(kafka_settings, scenario(12))
    fake = FakeCollections()
    sink = Sink(kafka_settings, sink_settings(max_pending=1), fake)
    stats = sink.run(timeout=30, exit_when_idle=True)
    assert stats.consumed == 12
    assert committed_total(kafka_settings, sink.settings) == 12


def test_two_sinks_in_one_group_share_the_work_through_a_rebalance(
        kafka_settings: KafkaSettings) -> None:
    records = scenario(600)
    produce(kafka_settings, records)
    fake = FakeCollections()
    slow = fake.update_collection

    def update_collection(recs: list, *, all_or_none: bool = False) -> list:
        time.sleep(0.3)  # slow enough that the second member joins mid-run
        return slow(recs, all_or_none=all_or_none)

    fake.update_collection = update_collection  # type: ignore[method-assign]
    settings = sink_settings(batch_size=20, max_pending=60)  # the rest waits on the broker
    first = Sink(kafka_settings, settings, fake)
    second = Sink(kafka_settings, settings, fake)
    results: dict[str, object] = {}
    t1 = threading.Thread(target=lambda: results.setdefault(
        "first", first.run(timeout=90, exit_when_idle=True)))
    t1.start()
    deadline = time.monotonic() + 30
    while first.stats.records_written == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    t2 = threading.Thread(target=lambda: results.setdefault(
        "second", second.run(timeout=90, exit_when_idle=True)))
    t2.start()
    t1.join()
    t2.join()
    assert first.stats.consumed > 0 and second.stats.consumed > 0  # both took part
    assert first.stats.consumed + second.stats.consumed >= 600  # redelivery allowed, no loss
    assert committed_total(kafka_settings, settings) == 600
    for rec in records:
        if rec["status"] in ("Provisioned", "Failed"):
            assert fake.records[("Order", rec["order_id"])]["Activation_Status__c"] == \
                rec["status"]


def test_a_limit_pause_with_a_backlog_waits_instead_of_spinning(
        kafka_settings: KafkaSettings) -> None:
    """More outcomes pending than one batch takes: the batch the limit refused is backed off,
    the rest are ready but may not be sent. The loop must sleep until the pause ends, not
    turn with a zero poll timeout for the whole pause (a core at 100 % for up to 16 minutes,
    or hours while a refused login lasts)."""
    produce(kafka_settings, [outcome(f"801{i:015d}", "Provisioned", n=i) for i in range(300)])
    fake = FakeCollections()
    limit_for(fake, 3.0)
    sink = Sink(kafka_settings, sink_settings(batch_size=50, limit_backoff_s=2.0), fake)
    polls_while_blocked: list[float] = []
    poll = sink._poll

    def counting(want: int, timeout: float) -> list:
        now = time.monotonic()
        if sink.pauses.resume_at(now) - now > 0.05:  # well inside the pause, not at its end
            polls_while_blocked.append(timeout)
        return poll(want, timeout)

    sink._poll = counting  # type: ignore[method-assign]
    stats = sink.run(timeout=60, exit_when_idle=True)
    assert stats.consumed == 300 and sum(1 for k in fake.records if k[0] == "Order") == 300
    assert polls_while_blocked, "the limit never paused the sink"
    # about one poll a second (plus a few around the edges), not thousands
    assert len(polls_while_blocked) <= 20, (len(polls_while_blocked), polls_while_blocked[:10])


def provisioned_with_opportunities(n: int) -> list[dict]:
    return [outcome(f"801{i:015d}", "Provisioned", opportunity_id=f"006{i:015d}", n=i)
            for i in range(n)]


def wait_until(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_update_revoked_mid_run_pauses_and_dead_letters_nothing(
        kafka_settings: KafkaSettings, caplog: pytest.LogCaptureFixture) -> None:
    """An admin removes the integration user's Update on Opportunity while the sink runs:
    each Opportunity comes back with its own INSUFFICIENT_ACCESS_OR_READONLY, and describe
    says the object is no longer updatable. A refusal no record caused: nothing is
    dead-lettered or committed past those outcomes, the sink pauses (not ready) and says
    what to grant; once Update is granted back, all of them are written and committed.
    (Classed permanent, every Provisioned outcome's Opportunity write was dead-lettered.)"""
    records = provisioned_with_opportunities(5)
    produce(kafka_settings, records)
    fake = FakeCollections()
    real_describe = fake.describe

    def describe(sobject: str) -> dict:
        answer = real_describe(sobject)
        if fake.describes == ["Order", "Opportunity"]:  # the start-up check passed: now
            fake.revoke_update("Opportunity")
        return answer

    fake.describe = describe  # type: ignore[method-assign]
    settings = sink_settings(retry_backoff_max_s=0.3)
    sink = Sink(kafka_settings, settings, fake)
    result: dict[str, object] = {}
    runner = threading.Thread(target=lambda: result.setdefault(
        "stats", sink.run(timeout=60, exit_when_idle=True)))
    with caplog.at_level("ERROR", logger="sinks.app"):
        runner.start()
        try:
            wait_until(lambda: sink.dead_letters.sent or sum(
                1 for c in fake.calls for r in c if r["attributes"]["type"] == "Opportunity"
            ) >= 10, 30, "the refused Opportunities to be tried again")
            assert sink.dead_letters.sent == 0
            assert sum(1 for k in fake.records if k[0] == "Order") == 5  # the Orders went
            assert not any(k[0] == "Opportunity" for k in fake.records)
            assert committed_total(kafka_settings, settings) == 0
            ready, details = sink.ops.ready()
            assert not ready and "SALESFORCE_UNAVAILABLE" in details["pause_reasons"]
        finally:
            fake.grant_update("Opportunity")
            runner.join()
    stats = result["stats"]
    assert stats.consumed == 5 and stats.dead_letters == 0  # type: ignore[attr-defined]
    for rec in records:
        assert fake.records[("Opportunity", rec["opportunity_id"])]["StageName"] == "Active"
    assert committed_total(kafka_settings, settings) == 5
    assert dead_letters(kafka_settings, expected=1, timeout=2) == []
    assert "may not update Opportunity" in caplog.text
    assert not sink.health()[1]["paused"]


def test_a_refusal_of_one_record_while_the_object_is_updatable_is_dead_lettered(
        kafka_settings: KafkaSettings) -> None:
    """One Opportunity refused (a sharing rule on that record): describe says Opportunity
    and the fields written are still updatable, so that outcome is dead-lettered as before
    and the others are written; a describe that fails transiently on the way (a 503) holds
    the record back instead of deciding either way."""
    from common.errors import SalesforceError

    records = provisioned_with_opportunities(5)
    produce(kafka_settings, records)
    fake = FakeCollections()
    shared = records[2]["opportunity_id"]
    fake.record_errors[shared] = [{"statusCode": "INSUFFICIENT_ACCESS_OR_READONLY",
                                   "message": "insufficient access rights on object id",
                                   "fields": []}]
    real_describe = fake.describe
    failures = iter(range(1))

    def describe(sobject: str) -> dict:
        if len(fake.describes) >= 2 and next(failures, None) is not None:  # after start-up
            fake.describes.append(sobject)
            raise SalesforceError("Salesforce 503", status=503, retryable=True)
        return real_describe(sobject)

    fake.describe = describe  # type: ignore[method-assign]
    settings = sink_settings(max_attempts=3)
    stats = Sink(kafka_settings, settings, fake).run(timeout=60, exit_when_idle=True)
    assert stats.consumed == 5 and stats.dead_letters == 1
    [(_key, _value, headers)] = dead_letters(kafka_settings, expected=1)
    assert headers["error_code"] == "INSUFFICIENT_ACCESS_OR_READONLY"
    assert headers["order_id"] == records[2]["order_id"]
    assert fake.describes == ["Order", "Opportunity", "Opportunity", "Opportunity"]
    assert sum(1 for k in fake.records if k[0] == "Opportunity") == 4
    assert committed_total(kafka_settings, settings) == 5
