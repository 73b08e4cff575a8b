"""The connector process against the Salesforce sandbox and the real broker.

Each test: a fresh sandbox, a unique topic prefix and connector name, the connector as a
subprocess (``python -m connectors run``), results read back with ``read_committed``.
"""

from __future__ import annotations

import random
import time
from collections import defaultdict

import pytest
import requests
from aiokafka.partitioner import murmur2

from common.deadletter import parse_headers
from connectors.offsets import OffsetCodec, load_position
from tests.connectors.conftest import read_requests, read_topic, wait_until

pytestmark = [pytest.mark.broker, pytest.mark.e2e, pytest.mark.slow]


def assert_exactly_once(rows: list[dict], expected_uuids: set[str] | None, n: int) -> None:
    uuids = [r["event_uuid"] for r in rows]
    assert len(uuids) == len(set(uuids)), "duplicate events in the requests topic"
    assert len(rows) == n, f"{len(rows)} records, expected {n}"
    if expected_uuids is not None:
        assert set(uuids) == expected_uuids
    by_partition: dict[int, list[bytes]] = defaultdict(list)
    for r in sorted(rows, key=lambda r: (r["_partition"], r["_offset"])):
        by_partition[r["_partition"]].append(r["replay_id"])
    for replay_ids in by_partition.values():
        assert replay_ids == sorted(replay_ids), "events of a partition out of delivery order"


def sandbox_uuids(sf) -> set[str]:
    out, after = set(), 0
    while True:
        page = sf.events(after=after, limit=1000)
        events = page["events"]
        if not events:
            return out
        out.update(e["uuid"] for e in events)
        after = events[-1]["replay"]


def test_approved_orders_exactly_once_in_order_with_position(sf, connector, kafka_settings):
    n = 200
    created = sf.seed(accounts=10, orders=n, broken_every=0)
    ids = sf.approve(n)
    retried = ids[:15]  # a retry after Failed publishes a second event for the same order
    for order_id in retried:
        sf.update("Order", order_id, {"Activation_Status__c": "Failed"})
        sf.update("Order", order_id, {"Activation_Status__c": "Activating"})
    total = n + len(retried)
    proc = connector("--max-events", str(total), "--timeout", "90")
    assert proc.wait(120) == 0, proc.text()[-3000:]
    rows = read_requests(kafka_settings)
    assert_exactly_once(rows, sandbox_uuids(sf), total)
    assert {r["OrderId__c"] for r in rows} == set(ids)
    for r in rows:
        assert r["_key"] == r["OrderId__c"].encode()
        # Java/aiokafka-compatible partitioning (the worker's tables rely on it)
        assert r["_partition"] == (murmur2(r["_key"]) & 0x7FFFFFFF) % kafka_settings.partitions
    for order_id in retried:
        mine = sorted((r for r in rows if r["OrderId__c"] == order_id), key=lambda r: r["_offset"])
        assert len(mine) == 2 and mine[0]["replay_id"] < mine[1]["replay_id"]
        assert mine[0]["IdemKey__c"] != mine[1]["IdemKey__c"]
    pos = load_position(kafka_settings.bootstrap_servers, kafka_settings.connector_offsets,
                        OffsetCodec(proc.name, "/event/OrderProvisionRequested__e"))
    assert pos is not None and pos.replay_id == max(r["replay_id"] for r in rows)
    assert created["orders"]


def test_sigkill_at_random_moments_still_exactly_once(sf, connector, kafka_settings):
    n = 300
    sf.seed(accounts=10, orders=n, broken_every=0)
    ids = sf.approve(n)
    # Slow the stream down so the kills land mid-stream: 10 events per response, 100 ms
    # each (at most ~100 events/s); each instance is killed at a random moment after its
    # first transaction committed, and the kill must leave the stream unfinished.
    sf.set_faults(grpc_latency_ms=100)
    rng = random.Random()
    slow = {"SF_PUBSUB_NUM_REQUESTED": "10", "CONNECTOR_MAX_BATCH": "10"}
    committed = []  # events committed after each kill
    for _ in range(4):
        proc = connector("--timeout", "60", **slow)
        # "event written" is logged once the batch's transaction committed
        wait_until(lambda p=proc: '"event written"' in p.text() or p.proc.poll() is not None,
                   30, "the instance writing", interval=0.02)
        time.sleep(rng.uniform(0.0, 0.3))
        assert proc.proc.poll() is None, proc.text()[-2000:]
        proc.kill()
        committed.append(len(read_requests(kafka_settings)))
    # every kill landed mid-stream: after that instance committed, before all n were
    mid_stream = [now for before, now in zip([0, *committed[:-1]], committed, strict=True)
                  if before < now < n]
    assert len(mid_stream) == 4, f"events committed after each kill: {committed} of {n}"
    sf.set_faults(grpc_latency_ms=0)
    final = connector("--timeout", "60")
    wait_until(lambda: len(read_requests(kafka_settings)) >= n, 60, "all events committed")
    # let the final instance get as far as resuming from the stored position before it is
    # stopped
    wait_until(lambda: "subscribed" in final.text(), 60, "final instance subscribed")
    assert final.terminate() == 0
    rows = read_requests(kafka_settings)
    assert_exactly_once(rows, sandbox_uuids(sf), n)
    assert {r["OrderId__c"] for r in rows} == set(ids)


def test_second_instance_is_fenced_and_no_duplicates(sf, connector, kafka_settings):
    n = 200
    sf.seed(accounts=10, orders=n, broken_every=0)
    sf.approve(n)
    sf.set_faults(grpc_latency_ms=100)    # ~50 events/s: the takeover lands mid-stream
    slow = {"SF_PUBSUB_NUM_REQUESTED": "5", "CONNECTOR_MAX_BATCH": "5",
            "SF_PUBSUB_KEEPALIVE_COMMIT_S": "1"}
    first = connector("--timeout", "60", **slow)
    wait_until(lambda: "event written" in first.text(), 30, "first instance writing")
    second = connector("--timeout", "60", **slow)
    assert first.wait(30) == 3, first.text()[-2000:]
    assert "FENCED" in first.text()
    assert '"event written"' in second.text() or second.proc.poll() is None
    sf.set_faults(grpc_latency_ms=0)
    wait_until(lambda: len(read_requests(kafka_settings)) >= n, 60, "all events committed")
    assert second.terminate() == 0
    assert_exactly_once(read_requests(kafka_settings), sandbox_uuids(sf), n)


def test_past_retention_policy_applied_gap_recorded_fail_exits(sf, connector, kafka_settings):
    sf.seed(accounts=5, orders=60, broken_every=0)
    first_batch = sf.approve(20)
    proc = connector("--max-events", "20", "--timeout", "60")
    assert proc.wait(90) == 0, proc.text()[-2000:]
    sf.advance_clock(hours=73)          # the stored replay id is now past retention
    later = sf.approve(10)               # new events, after the purge
    failing = connector("--timeout", "60", SF_EVENTS_INVALID_REPLAY="FAIL")
    assert failing.wait(90) == 2, failing.text()[-2000:]
    assert "SF_EVENTS_INVALID_REPLAY=FAIL" in failing.text()
    gaps = read_topic(kafka_settings.bootstrap_servers, kafka_settings.replay_gaps, 1)
    assert len(gaps) == 1
    codec = OffsetCodec("x", "y")
    gap = codec.decode_gap(gaps[0].value())
    assert gap["policy"] == "FAIL" and "corrupted" in gap["error_code"]
    assert gap["last_good_replay_id"] == max(r["replay_id"] for r in read_requests(kafka_settings))

    resumed = connector("--max-events", "10", "--timeout", "60",
                        SF_EVENTS_INVALID_REPLAY="EARLIEST")
    assert resumed.wait(90) == 0, resumed.text()[-2000:]
    gaps = read_topic(kafka_settings.bootstrap_servers, kafka_settings.replay_gaps, 1)
    assert [codec.decode_gap(g.value())["policy"] for g in gaps] == ["FAIL", "EARLIEST"]
    rows = read_requests(kafka_settings)
    assert_exactly_once(rows, None, 30)
    assert {r["OrderId__c"] for r in rows} == set(first_batch) | set(later)
    # No crash loop: one refusal, then a normal subscription from EARLIEST.
    assert resumed.text().count("refused by Salesforce") == 1


def test_a_quiet_channel_past_retention_is_told_apart_from_an_outage(sf, connector,
                                                                      kafka_settings):
    """Salesforce's keepalive "can be the last event consumed": on a channel with no event
    for 72 h (a long weekend) the stored id, committed by a keepalive a minute ago, is
    refused at the next resubscription. Nothing is lost (EARLIEST), but the connector said
    at ERROR that it had been down longer than Salesforce keeps events."""
    import json as _json

    sf.seed(accounts=5, orders=20, broken_every=0)
    sf.set_faults(keepalives_hold_position=True)
    first = set(sf.approve(3))
    proc = connector("--timeout", "90", SF_PUBSUB_KEEPALIVE_COMMIT_S="1")
    wait_until(lambda: len(read_requests(kafka_settings)) >= 3, 30, "the approvals")
    codec = OffsetCodec(proc.name, "/event/OrderProvisionRequested__e")
    last_event = max(r["replay_id"] for r in read_requests(kafka_settings))
    wait_until(lambda: proc.text().count("keepalive position committed") >= 2, 30,
               "keepalives committing the last event's id")
    stored = load_position(kafka_settings.bootstrap_servers,
                           kafka_settings.connector_offsets, codec)
    assert stored is not None and stored.replay_id == last_event  # the id did not move
    sf.advance_clock(hours=73)  # quiet past the retention: the last event is forgotten
    sf.drop_streams()           # a routine stream end: resubscribe from the stored id
    wait_until(lambda: "refused by Salesforce" in proc.text(), 30, "the refusal")
    later = set(sf.approve(2))
    wait_until(lambda: len(read_requests(kafka_settings)) >= 5, 30, "events after it")
    assert proc.terminate() == 0
    refusal = [_json.loads(line) for line in proc.text().splitlines()
               if "refused by Salesforce" in line]
    assert len(refusal) == 1 and refusal[0]["level"] == "WARNING", refusal
    assert "a keepalive confirmed it current" in refusal[0]["msg"], refusal
    gaps = [codec.decode_gap(g.value()) for g in read_topic(
        kafka_settings.bootstrap_servers, kafka_settings.replay_gaps, 1)]
    assert len(gaps) == 1 and "a keepalive confirmed it current" in gaps[0]["error_message"]
    rows = read_requests(kafka_settings)
    assert_exactly_once(rows, None, 5)
    assert {r["OrderId__c"] for r in rows} == first | later


def test_a_gap_whose_instance_died_before_its_pass_is_passed_by_the_next(
        sf, connector, kafka_settings):
    """The gap pass waits until the replay after a gap settles (GAP_SETTLE_S quiet). An
    instance that recorded a gap, committed a position past it and died in between left
    the gap's Orders Activating with no request: its successor resumes from a valid
    position, never meets the gap, and with CONNECTOR_RECONCILE_INTERVAL_S=0 ('only after
    gaps') nothing re-requested them, ever."""
    sf.seed(accounts=5, orders=40, broken_every=0)
    first = sf.approve(5)
    proc = connector("--max-events", "5", "--timeout", "60")
    assert proc.wait(90) == 0, proc.text()[-2000:]
    codec = OffsetCodec(proc.name, "/event/OrderProvisionRequested__e")

    def stored():
        return load_position(kafka_settings.bootstrap_servers,
                             kafka_settings.connector_offsets, codec)
    before = stored()
    stranded = sf.approve(6)
    sf.advance_clock(hours=73)           # their events are purged, and the stored replay id
    later = sf.approve(10)               # events after the purge: a valid position past it
    gaps_only = {"CONNECTOR_RECONCILE_INTERVAL_S": "0"}
    dying = connector("--timeout", "60", **gaps_only)
    wait_until(lambda: stored() != before and len(read_requests(kafka_settings)) >= 15, 30,
               "the gap recorded and a position past it committed")
    dying.kill()                         # well within GAP_SETTLE_S: its gap pass never ran
    assert "refused by Salesforce" in dying.text()
    requested = {r["OrderId__c"] for r in read_requests(kafka_settings)}
    assert requested == set(first) | set(later), "the gap pass ran before the kill"

    restarted = connector("--timeout", "90", **gaps_only)

    def re_requested() -> set[str]:
        return {r["OrderId__c"] for r in read_requests(kafka_settings)
                if r["RequestedBy__c"] == "sfprov reconciler (gap)"}
    wait_until(lambda: re_requested() >= set(stranded), 60,
               "the stranded Orders re-requested by the restarted connector's gap pass")
    assert re_requested() == set(stranded)
    text = restarted.text()
    assert "refused by Salesforce" not in text  # it resumed without meeting the gap itself
    assert "a replay gap was recorded" in text
    assert restarted.terminate() == 0


def test_token_expiry_dropped_and_silent_streams_recovered(sf, connector, kafka_settings):
    sf.seed(accounts=5, orders=80, broken_every=0)
    proc = connector("--timeout", "90", SF_PUBSUB_STALL_TIMEOUT_S="3")
    wait_until(lambda: "subscribed" in proc.text(), 30, "subscription")
    expected = set(sf.approve(20))
    wait_until(lambda: len(read_requests(kafka_settings)) >= 20, 30, "first batch")
    sf.expire_tokens()
    expected |= set(sf.approve(20))
    wait_until(lambda: len(read_requests(kafka_settings)) >= 40, 30, "after token expiry")
    sf.drop_streams()
    expected |= set(sf.approve(20))
    wait_until(lambda: len(read_requests(kafka_settings)) >= 60, 30, "after dropped stream")
    sf.set_faults(keepalives_paused=True)   # silent stream: no events, no keepalives
    wait_until(lambda: proc.metric('sfprov_connector_reconnects_total{cause="watchdog"}') >= 1,
               30, "watchdog resubscribe")
    sf.set_faults(keepalives_paused=False)
    expected |= set(sf.approve(20))
    wait_until(lambda: len(read_requests(kafka_settings)) >= 80, 30, "after silent stream")
    assert proc.metric('sfprov_connector_reconnects_total{cause="auth"}') >= 1
    assert proc.metric('sfprov_connector_reconnects_total{cause="transient"}') >= 1
    health = requests.get(f"http://127.0.0.1:{proc.port}/healthz", timeout=5)
    assert health.status_code == 200 and health.json()["state"] == "subscribed"
    assert proc.terminate() == 0
    rows = read_requests(kafka_settings)
    assert_exactly_once(rows, None, 80)
    assert {r["OrderId__c"] for r in rows} == expected


def test_bad_events_are_dead_lettered_and_the_rest_flows(sf, connector, kafka_settings):
    sf.seed(accounts=5, orders=40, broken_every=0)
    good = sf.approve(20)
    bad1 = sf.inject_event("malformed")
    bad2 = sf.inject_event("unknown_schema")
    good += sf.approve(20)
    proc = connector("--max-events", "42", "--timeout", "60")
    assert proc.wait(90) == 0, proc.text()[-2000:]
    rows = read_requests(kafka_settings)
    assert_exactly_once(rows, None, 40)
    assert {r["OrderId__c"] for r in rows} == set(good)
    dead = read_topic(kafka_settings.bootstrap_servers, kafka_settings.dead_letters, 3)
    by_uuid = {parse_headers(m.headers())["event_uuid"]: (m, parse_headers(m.headers()))
               for m in dead}
    assert set(by_uuid) == {bad1["uuid"], bad2["uuid"]}
    msg, headers = by_uuid[bad1["uuid"]]
    assert headers["error_code"] == "undecodable" and headers["stage"] == "connector"
    assert msg.value() == b"\xff\xff\xff\xff\x0fnot-avro"
    assert headers["replay_id"] and headers["schema_id"] == bad1["schema_id"]
    assert by_uuid[bad2["uuid"]][1]["error_code"] == "unknown_schema"


def test_a_profile_without_subscribe_is_told_and_waited_out(sf, connector, kafka_settings):
    """The integration user's Subscribe on the event taken away (the sandbox holds it to its
    profile as an org does): the connector says so — ERROR line, /readyz 503 naming the
    channel — and keeps trying; granted again, the Orders approved meanwhile arrive, once."""
    sf.seed(accounts=5, orders=20, broken_every=0)
    channel = "/event/OrderProvisionRequested__e"
    sf.set_permissions(events={channel: ""})
    proc = connector("--timeout", "90")
    expected = set(sf.approve(10))

    def refused() -> bool:
        try:
            resp = requests.get(f"http://127.0.0.1:{proc.port}/readyz", timeout=5)
        except requests.ConnectionError:    # the health server is not listening yet
            return False
        return resp.status_code == 503 and "SF_PROVISION_EVENT_CHANNEL" in resp.text
    wait_until(refused, 30, "/readyz naming the refused subscription")
    assert "PERMISSION_DENIED" in proc.text() and read_requests(kafka_settings) == []
    sf.reset_permissions()
    wait_until(lambda: len(read_requests(kafka_settings)) >= 10, 30, "events once granted")
    wait_until(lambda: requests.get(f"http://127.0.0.1:{proc.port}/readyz",
                                    timeout=5).status_code == 200, 30, "ready again")
    assert proc.terminate() == 0
    rows = read_requests(kafka_settings)
    assert_exactly_once(rows, None, 10)
    assert {r["OrderId__c"] for r in rows} == expected
