"""SIGKILL the worker mid-run (WHMCS slow, so kills land between AddOrder and the commit).

After restarts: 0 duplicate WHMCS orders, every event has an outcome, and every repeated
outcome of one event is identical.
"""

from __future__ import annotations

import random
import signal
import time
from collections import defaultdict
from contextlib import ExitStack

import pytest

from streams.watchdog import STALL_EXIT_CODE
from tests.streams.support import (
    ASSIGNED_SOME,
    Reader,
    outcomes,
    produce,
    request,
    wait_for_log_match,
    worker_env,
    worker_process,
)

pytestmark = [pytest.mark.broker, pytest.mark.e2e, pytest.mark.slow]


def _check(events, got, whmcs, provisionable):
    by_event = defaultdict(list)
    for o in got:
        by_event[o["event_uuid"]].append(o)
    missing = {e["event_uuid"] for e in events} - set(by_event)
    assert not missing, f"{len(missing)} events without an outcome"
    for uuid, seen in by_event.items():
        assert all(o == seen[0] for o in seen), f"contradicting outcomes for {uuid}: {seen}"
    assert whmcs.duplicates() == {}
    primary = {o["order_id"]: o for o in got if o["status"] != "Duplicate"}
    for order_id in provisionable:
        made = whmcs.orders_for(order_id)
        assert primary[order_id]["status"] == "Provisioned", primary[order_id]
        assert len(made) == 1 and made[0]["status"] == "Active", made
        assert primary[order_id]["whmcs_order_id"] == int(made[0]["id"])


def _scenario(salesforce, count, rng):
    seeded = salesforce.seed(accounts=20, orders=count, broken_every=0)["orders"]
    ids = [o["order_id"] for o in seeded]
    salesforce.approve(ids=ids)
    events = []
    for order_id in ids:
        first = request(order_id)
        events.append(first)
        if rng.random() < 0.1:
            events.append(request(order_id, idem_key=first["IdemKey__c"]))
    return ids, events


def test_sigkill_restarts_leave_no_duplicates_and_no_gaps(kafka_settings, salesforce, whmcs,
                                                          tmp_path):
    rng = random.Random(11)
    ids, events = _scenario(salesforce, 120, rng)
    whmcs.set_faults("AddOrder", latency_ms=150, jitter_ms=100, hang_rate=0.05, hang_s=3)
    whmcs.set_faults("AcceptOrder", latency_ms=50)
    produce(kafka_settings.bootstrap_servers, kafka_settings.requests, events)
    env = worker_env(bootstrap=kafka_settings.bootstrap_servers,
                     prefix=kafka_settings.topic_prefix, state_dir=tmp_path,
                     sf_env=salesforce.env(), wh_env=whmcs.env(), WORKER_STORE="rocksdb://",
                     WORKER_MAX_IN_FLIGHT="10", WORKER_WHMCS_PARALLELISM="8",
                     WORKER_INSTANCE_ID="w1", WORKER_SESSION_TIMEOUT_S="10")
    reader = Reader(kafka_settings.bootstrap_servers, kafka_settings.outcomes)
    kills = 0
    try:
        for _ in range(3):
            with worker_process(env, tmp_path / "worker.log") as proc:
                target = len(reader.records) + rng.randint(8, 25)
                reader.poll_until(lambda r, t=target: len(r) >= t, timeout=90,
                                  alive=lambda p=proc: p.poll() is None)
                time.sleep(rng.random() * 0.5)
                assert proc.poll() is None, "worker died on its own"
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                kills += 1
        whmcs.clear_faults()
        uuids = {e["event_uuid"] for e in events}
        with worker_process(env, tmp_path / "worker.log") as proc:
            reader.poll_until(lambda r: uuids <= {o["event_uuid"] for o in outcomes(r)},
                              timeout=150, alive=lambda: proc.poll() is None)
    finally:
        whmcs.clear_faults()
    assert kills == 3
    _check(events, outcomes(reader.records), whmcs, ids)
    got = outcomes(reader.records)
    print(f"kills={kills} outcomes={len(got)} events={len(events)} "
          f"recovered={sum(o['recovered'] for o in got)} "
          f"re-emitted={len(got) - len({o['event_uuid'] for o in got})} "
          f"whmcs_calls={whmcs.counters()['calls']}")


def test_two_workers_one_killed(kafka_settings, salesforce, whmcs, tmp_path):
    rng = random.Random(12)
    ids, events = _scenario(salesforce, 90, rng)
    whmcs.set_faults("AddOrder", latency_ms=150, jitter_ms=100)
    base = dict(bootstrap=kafka_settings.bootstrap_servers, prefix=kafka_settings.topic_prefix,
                sf_env=salesforce.env(), wh_env=whmcs.env(), WORKER_MAX_IN_FLIGHT="10",
                WORKER_SESSION_TIMEOUT_S="8", WORKER_STALL_TIMEOUT_S="20")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    reader = Reader(kafka_settings.bootstrap_servers, kafka_settings.outcomes)
    uuids = {e["event_uuid"] for e in events}
    restarts = 0
    try:
        with ExitStack() as stack:
            a = stack.enter_context(worker_process(worker_env(state_dir=tmp_path / "a", **base),
                                                   tmp_path / "a.log"))
            b = stack.enter_context(worker_process(worker_env(state_dir=tmp_path / "b", **base),
                                                   tmp_path / "b.log"))
            for log in ("a.log", "b.log"):  # both own partitions before anything arrives
                assert wait_for_log_match(tmp_path / log, ASSIGNED_SOME, 60)
            time.sleep(3)
            produce(kafka_settings.bootstrap_servers, kafka_settings.requests, events)
            reader.poll_until(lambda r: len(r) >= 25, timeout=90,
                              alive=lambda: a.poll() is None and b.poll() is None)
            a.send_signal(signal.SIGKILL)
            a.wait()
            whmcs.clear_faults()
            deadline = time.monotonic() + 200

            def done(r):
                return uuids <= {o["event_uuid"] for o in outcomes(r)}
            while not done(reader.records) and time.monotonic() < deadline:
                # The survivor is supervised as in production: an exit on a detected stall
                # (code 75, streams.watchdog) is restarted; any other exit fails the test.
                reader.poll_until(done, timeout=max(1.0, deadline - time.monotonic()),
                                  alive=lambda b=b: b.poll() is None)
                if b.poll() is not None and not done(reader.records):
                    assert b.returncode == STALL_EXIT_CODE, f"worker b exited {b.returncode}"
                    restarts += 1
                    assert restarts <= 4, "the survivor stalled again and again"
                    b = stack.enter_context(worker_process(
                        worker_env(state_dir=tmp_path / "b", **base), tmp_path / "b.log"))
    finally:
        whmcs.clear_faults()
    b_log = (tmp_path / "b.log").read_text()
    reseeks = b_log.count("seeking back to the committed offsets")
    holds = b_log.count("commit gate: faust would commit")
    print(f"survivor: {reseeks} re-seeks, {holds} commit-gate holds and {restarts} restarts "
          "after a detected stall")
    _check(events, outcomes(reader.records), whmcs, ids)
    a_log = (tmp_path / "a.log").read_text()
    assert "WHMCS order created" in a_log, "worker a never provisioned: the test proved nothing"
