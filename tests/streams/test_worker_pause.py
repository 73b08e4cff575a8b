"""A worker paused (SIGSTOP) or cut off from the broker past its session timeout while
Orders wait for a WHMCS slot.

Two workers share the partitions; WHMCS is slow and only two calls may be in flight, so the
stopped worker holds a queue of Orders. The group hands its partitions to the other worker,
which redelivers the same events; when the paused one resumes, its ownership lease
(streams.lease) has expired: it must make no WHMCS call for those Orders.

The cut is the other fault a lease must survive: the worker goes on running — its timers,
its WHMCS calls, its Salesforce reads — while its heartbeats, fetches and table writes
vanish (``ops.netcut``: it reaches the broker only through a route the test cuts; nothing
is closed, nothing answers). Its lease must run out on its own clock, during the cut.

The same tests with the lease switched off (``bench/broken_worker.py --break lease``) must
find duplicate WHMCS orders — so we know they can see the bug.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections import defaultdict
from contextlib import ExitStack

import pytest

from tests.streams.support import (
    ASSIGNED_SOME,
    Reader,
    dead_letters,
    outcomes,
    produce,
    request,
    wait_for_log,
    wait_for_log_match,
    worker_env,
    worker_process,
)

pytestmark = [pytest.mark.broker, pytest.mark.e2e, pytest.mark.slow]
SESSION_S = 6
PAUSE_S = 5 * SESSION_S


def _paused_run(kafka_settings, salesforce, whmcs, tmp_path, *, paused_module: str,
                paused_args: tuple[str, ...] = ("worker",), cut=None):
    """``cut``: ``(netcut, bootstrap)`` of ``broker_cut`` — worker a reaches the broker
    through it and is cut off instead of paused."""
    seeded = salesforce.seed(accounts=20, orders=60, broken_every=0)["orders"]
    ids = [o["order_id"] for o in seeded]
    salesforce.approve(ids=ids)
    events = [request(order_id) for order_id in ids]
    whmcs.set_faults("AddOrder", latency_ms=400)
    base = dict(bootstrap=kafka_settings.bootstrap_servers, prefix=kafka_settings.topic_prefix,
                sf_env=salesforce.env(), wh_env=whmcs.env(), WORKER_MAX_IN_FLIGHT="200",
                WORKER_WHMCS_PARALLELISM="2", WORKER_SESSION_TIMEOUT_S=str(SESSION_S),
                WORKER_STALL_TIMEOUT_S="0", WORKER_INTENT_LEASE_S="4",
                # well past the pause or cut: an Order the cut held at its intent's renewal
                # (not durable while cut off) meets its expired send deadline after the heal
                # and is retried, not Failed; at 30 s (the tests' default, as long as the
                # cut) it was Failed or sent depending on a few ms, so the lease-off cut
                # showed its duplicates only some of the time
                WORKER_RETRY_DEADLINE_S="120")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a_log, b_log = tmp_path / "a.log", tmp_path / "b.log"
    reader = Reader(kafka_settings.bootstrap_servers, kafka_settings.outcomes)
    dlq = Reader(kafka_settings.bootstrap_servers, kafka_settings.dead_letters)
    uuids = {e["event_uuid"] for e in events}
    try:
        with ExitStack() as stack:
            a_base = base if cut is None else {**base, "bootstrap": cut[1]}
            a = stack.enter_context(worker_process(
                worker_env(state_dir=tmp_path / "a", **a_base), a_log, module=paused_module,
                args=paused_args))
            b = stack.enter_context(worker_process(
                worker_env(state_dir=tmp_path / "b", **base), b_log))
            for log in (a_log, b_log):  # both own partitions before anything arrives
                assert wait_for_log_match(log, ASSIGNED_SOME, 60)
            time.sleep(2)
            produce(kafka_settings.bootstrap_servers, kafka_settings.requests, events)
            # Pause worker a in the middle of its batch: Orders are queued behind the two
            # WHMCS slots (400 ms per AddOrder).
            assert wait_for_log(a_log, "WHMCS order created", 60)
            if cut is None:
                os.kill(a.pid, signal.SIGSTOP)
            else:
                cut[0].cut("cut")
            time.sleep(PAUSE_S)
            assert a.poll() is None, "the cut-off worker exited on its own"
            with open(a_log, "a") as log:  # WHMCS's order dates: local time, to the second
                log.write(f"\n=== SIGCONT {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
            if cut is None:
                os.kill(a.pid, signal.SIGCONT)
            else:
                cut[0].heal("cut")

            def done(r):
                return uuids <= {o["event_uuid"] for o in outcomes(r)} | {
                    h.get("dlq.event_uuid") for h in dead_letters(dlq.records)}
            deadline = time.monotonic() + 180
            while not done(reader.records) and time.monotonic() < deadline:
                reader.poll_until(done, timeout=5, alive=lambda: b.poll() is None)
                dlq.poll_until(lambda r: False, timeout=0.5)
                assert a.poll() is None and b.poll() is None, "a worker exited on its own"
            time.sleep(SESSION_S)  # anything late from the resumed worker lands meanwhile
            reader.poll_until(lambda r: False, timeout=2)
    finally:
        whmcs.clear_faults()
    return ids, events, outcomes(reader.records), a_log.read_text(), b_log.read_text()


def _orders(log: str, needle: str) -> set[str]:
    """Order ids of the JSON log lines whose message contains ``needle``."""
    out = set()
    for line in log.splitlines():
        if needle in line and line.startswith("{"):
            order_id = json.loads(line).get("order_id")
            if order_id:
                out.add(order_id)
    return out


def _created_after_resume(whmcs, a_log: str) -> set[str]:
    """Orders the paused worker got a WHMCS order for that WHMCS made after the SIGCONT.

    Its log alone cannot say: an ``AddOrder`` it wrote just before the SIGSTOP is answered
    during the pause and logged ("WHMCS order created") only once it runs again — sent
    while it still owned the Order, and then fenced at the next step. WHMCS's own order date
    says when the order was made; one made after the resume was sent after it."""
    resumed = a_log.split("=== SIGCONT ", 1)[1]
    stamp = resumed[:19]
    return {oid for oid in _orders(resumed, "WHMCS order created")
            if any(o["date"] >= stamp for o in whmcs.orders_for(oid))}


def _held(kafka_settings, salesforce, whmcs, tmp_path, *, cut=None) -> None:
    """The lease on: no duplicates, one identical outcome per event, and the stopped worker
    fenced what it held, sending no AddOrder once it ran again."""
    what = "paused" if cut is None else "cut-off"
    ids, events, got, a_log, b_log = _paused_run(kafka_settings, salesforce, whmcs, tmp_path,
                                                 paused_module="streams", cut=cut)
    assert {oid: n for oid, n in whmcs.duplicates().items() if oid in ids} == {}
    by_event = defaultdict(list)
    for o in got:
        by_event[o["event_uuid"]].append(o)
    assert {e["event_uuid"] for e in events} <= set(by_event), "events without an outcome"
    for uuid, seen in by_event.items():
        assert all(o == seen[0] for o in seen), f"contradicting outcomes for {uuid}"
    for order_id in ids:
        made = whmcs.orders_for(order_id)
        assert len(made) == 1 and made[0]["status"] == "Active", (order_id, made)
    resumed = a_log.split("=== SIGCONT", 1)[1]
    fenced = _orders(resumed, "fenced:")
    assert fenced, f"the {what} worker held no queued Order: the test proved nothing"
    created_after = _orders(resumed, "WHMCS order created")
    sent_after = _created_after_resume(whmcs, a_log)
    assert not sent_after, f"the {what} worker sent AddOrders after it resumed: {sent_after}"
    assert not created_after & _orders(b_log, "WHMCS order created")
    waits = sum(1 for line in a_log.splitlines() if "waiting for the ownership lease" in line)
    print(f"{what} worker fenced {len(fenced)} Order(s) on resuming after {waits} lease "
          f"wait(s); {len(created_after)} AddOrder(s) it sent before were answered after; "
          f"worker b recovered {sum(o['recovered'] for o in got)} by lookup")


def _broken(kafka_settings, salesforce, whmcs, tmp_path, *, cut=None) -> None:
    ids, _events, _got, a_log, _b_log = _paused_run(
        kafka_settings, salesforce, whmcs, tmp_path, paused_module="bench.broken_worker",
        paused_args=("--break", "lease", "worker"), cut=cut)
    duplicates = {oid: n for oid, n in whmcs.duplicates().items() if oid in ids}
    sent_after = _created_after_resume(whmcs, a_log)
    print(f"without the lease: {len(duplicates)} Orders with several WHMCS orders; "
          f"{len(sent_after)} AddOrder(s) sent after the resume")
    assert duplicates, "the test cannot see the bug the lease prevents"
    assert sent_after, "the check of the lease test cannot see an AddOrder sent after a resume"


def test_paused_worker_makes_no_whmcs_call_for_orders_it_no_longer_owns(
        kafka_settings, salesforce, whmcs, tmp_path):
    _held(kafka_settings, salesforce, whmcs, tmp_path)


def test_the_same_pause_without_the_lease_creates_duplicates(kafka_settings, salesforce, whmcs,
                                                             tmp_path):
    _broken(kafka_settings, salesforce, whmcs, tmp_path)


def test_a_worker_cut_off_from_the_broker_makes_no_whmcs_call_for_orders_it_no_longer_owns(
        kafka_settings, salesforce, whmcs, tmp_path, broker_cut):
    _held(kafka_settings, salesforce, whmcs, tmp_path, cut=broker_cut)


def test_the_same_cut_without_the_lease_creates_duplicates(kafka_settings, salesforce, whmcs,
                                                           tmp_path, broker_cut):
    _broken(kafka_settings, salesforce, whmcs, tmp_path, cut=broker_cut)
