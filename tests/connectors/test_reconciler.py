"""The connector's reconciliation without Salesforce or Kafka: the per-pass limit, the records
it writes (what the worker and ``sfprov trace`` will see), and the gap trigger's settling."""

from __future__ import annotations

import pytest

from common.avro import AvroSerde
from common.reconcile import Plan
from common.settings import ConnectorSettings, KafkaSettings
from connectors import reconciler as rec
from connectors.reconciler import Reconciler


def make(monkeypatch, plan: Plan, max_per_pass: int = 2) -> Reconciler:
    kafka = KafkaSettings.load({}, topic_prefix="t.")
    settings = ConnectorSettings.load({}, reconcile_max_per_pass=max_per_pass)
    monkeypatch.setattr(rec, "find_stranded", lambda *a, **kw: plan)
    return Reconciler(kafka, settings, sf=None, worker_group="t.sfprov-worker",  # type: ignore[arg-type]
                      written=lambda: 0)


def test_a_pass_re_requests_the_oldest_stranded_orders_up_to_the_limit(monkeypatch):
    plan = Plan(activating=5, no_request=["801000000000003AAA", "801000000000001AAA"],
                undecided=["801000000000002AAA"],
                candidates={f"80100000000000{i}AAA": {"LastModifiedDate":
                                                     f"2026-01-0{i}T00:00:00.000+0000"}
                            for i in (1, 2, 3)})
    r = make(monkeypatch, plan)
    before = rec.REQUESTS.labels("periodic")._value.get()
    r._pass("periodic", older_than_s=0.0)
    written: list = []
    assert r.write_due(written.extend) == 2
    assert r.write_due(written.extend) == 0  # a plan is written once
    assert rec.REQUESTS.labels("periodic")._value.get() == before + 2
    serde = AvroSerde("provision_request")
    values = [serde.decode(value, headers) for _topic, _key, value, headers in written]
    assert [v["OrderId__c"] for v in values] == ["801000000000001AAA", "801000000000002AAA"]
    for (topic, key, _value, headers), value in zip(written, values, strict=True):
        assert topic == "t.salesforce.order-provision-requested"
        assert key == value["OrderId__c"].encode()
        assert value["RequestedBy__c"] == "sfprov reconciler (periodic)"
        assert value["IdemKey__c"].startswith(value["OrderId__c"] + "-reconcile-")
        assert ("sfprov.source", b"reconcile-periodic") in headers


def test_a_failed_write_keeps_the_plan_for_the_next_turn_and_raises(monkeypatch):
    """A broker blip or a transaction timed out under the write: the gap that planned it is
    no longer pending and, with CONNECTOR_RECONCILE_INTERVAL_S=0, no pass found the Orders
    again. The aborted transaction wrote nothing; the next turn writes the same records."""
    from common.errors import KafkaError, TransactionTimedOutError

    r = make(monkeypatch, Plan(no_request=["801000000000001AAA"],
                               candidates={"801000000000001AAA": {}}))
    r._pass("gap", older_than_s=0.0, changed_before=0.0)
    assert r._gap_at is None  # the gap is passed: only the plan holds its Orders now
    tried: list = []
    for error in (KafkaError("leader not available", retryable=True),
                  TransactionTimedOutError("fenced after 61 s", age_s=61.0, timeout_s=60.0)):
        def fail(records, error=error):
            tried.append(records)
            raise error
        try:
            r.write_due(fail)
        except type(error):
            pass
        else:
            raise AssertionError("the write's error must reach the connector's loop")
    written: list = []
    assert r.write_due(written.extend) == 1
    assert tried[0] == tried[1] == written  # the same IdemKey__c and event uuid each time
    assert r.write_due(written.extend) == 0  # written once
    assert r._requested == {"801000000000001AAA": 1}


def test_a_write_failing_for_good_drops_the_plan(monkeypatch):
    """Not retryable: it would fail on every turn of the connector's loop."""
    from common.errors import KafkaError

    r = make(monkeypatch, Plan(no_request=["801000000000001AAA"],
                               candidates={"801000000000001AAA": {}}))
    r._pass("periodic", older_than_s=0.0)

    def fail(_records):
        raise KafkaError("message too large", retryable=False)
    try:
        r.write_due(fail)
    except KafkaError:
        pass
    else:
        raise AssertionError("the write's error must reach the connector's loop")
    assert r.write_due(lambda _r: None) == 0


def test_a_newer_plan_made_while_the_write_failed_is_kept(monkeypatch):
    from common.errors import KafkaError

    r = make(monkeypatch, Plan(no_request=["801000000000001AAA"],
                               candidates={"801000000000001AAA": {}}))
    r._pass("periodic", older_than_s=0.0)
    newer = ("periodic", ["801000000000002AAA"], None)

    def fail(_records):
        r._ready = newer  # the planning thread finished a pass meanwhile
        raise KafkaError("leader not available", retryable=True)
    with pytest.raises(KafkaError):
        r.write_due(fail)
    assert r._ready is newer


def test_the_gap_pass_waits_until_no_event_was_written_for_a_while(monkeypatch):
    clock = [0.0]
    written = [0]
    r = make(monkeypatch, Plan())
    r._clock = lambda: clock[0]

    def wait(_timeout):  # each wait is a second; events keep coming for five of them
        clock[0] += 1.0
        if clock[0] <= 5:
            written[0] += 10
        return False
    monkeypatch.setattr(r._stop, "wait", wait)
    r._written = lambda: written[0]
    assert r._gap_settled()
    assert clock[0] >= 5 + rec.GAP_SETTLE_S


def test_steady_traffic_after_a_gap_holds_its_pass_only_so_long(monkeypatch):
    """Approvals at one a second never leave GAP_SETTLE_S quiet: the gap pass (and every
    periodic pass behind it) waited for as long as they came."""
    clock, written = [0.0], [0]
    r = make(monkeypatch, Plan())
    r._clock = lambda: clock[0]

    def wait(_timeout):
        clock[0] += 1.0
        written[0] += 1
        assert clock[0] < 3600, "the gap pass is still waiting after an hour of traffic"
        return False
    monkeypatch.setattr(r._stop, "wait", wait)
    r._written = lambda: written[0]
    assert r._gap_settled()
    assert clock[0] == rec.GAP_SETTLE_MAX_S


def test_a_gap_larger_than_one_pass_is_worked_through_by_gap_passes(monkeypatch):
    """CONNECTOR_RECONCILE_INTERVAL_S=0 ('only after gaps'): the Orders a gap pass left over
    for the next pass were never re-requested — there was no next pass."""
    orders = [f"80100000000000{i}AAA" for i in range(1, 6)]
    plan = Plan(no_request=list(orders), candidates={
        oid: {"LastModifiedDate": f"2026-01-0{i}T00:00:00.000+0000"}
        for i, oid in enumerate(orders, start=1)})
    r = make(monkeypatch, plan)
    r._pass("gap", older_than_s=0.0, changed_before=123.0)
    assert r.write_due(lambda _records: None) == 2
    assert r._gap_at == 123.0  # another gap pass is due
    plan.no_request[:] = orders[4:]  # what the next pass finds stranded
    r._gap_at = None
    r._pass("gap", older_than_s=0.0, changed_before=123.0)
    assert r.write_due(lambda _records: None) == 1 and r._gap_at is None


def test_a_pass_failing_unexpectedly_does_not_end_the_planning_thread(monkeypatch):
    """A missing topic ended the thread with SystemExit (not an Exception): no later pass,
    no log line, no metric. The planning thread itself: a pass that raises is counted as
    an error and the next trigger still runs a pass."""
    import threading
    import time

    from common.lag import end_offsets

    monkeypatch.setattr(rec, "GAP_SETTLE_S", 0.0)
    r = make(monkeypatch, Plan())
    passes: list[str] = []
    ran = threading.Event()

    def failing_pass(trigger, **_kwargs):
        passes.append(trigger)
        ran.set()
        raise RuntimeError("unexpected")
    monkeypatch.setattr(r, "_pass", failing_pass)
    errors = rec.PASSES.labels("gap", "error")
    before = errors._value.get()
    r.start()
    try:
        for n in (1, 2):
            ran.clear()
            r.gap_recorded()
            assert ran.wait(10), f"gap pass {n} never ran: the planning thread ended"
            deadline = time.monotonic() + 10
            while errors._value.get() < before + n and time.monotonic() < deadline:
                time.sleep(0.01)
        assert r._thread.is_alive()
        assert passes == ["gap", "gap"]
        assert errors._value.get() == before + 2
    finally:
        r.stop()
        r._thread.join(10)
    assert not r._thread.is_alive()

    class NoTopic:
        def list_topics(self, topic, timeout):
            class Meta:
                topics: dict = {}
            return Meta()
    try:
        end_offsets(NoTopic(), "t.provisioning.outcomes")
    except Exception as exc:  # noqa: BLE001 - what a pass's handler catches
        assert "does not exist" in str(exc)
    else:
        raise AssertionError("a missing topic must raise")


def test_an_order_stranded_again_after_each_re_request_stops_crowding_the_others(monkeypatch):
    """An Order whose every request ends as a dead letter (no outcome) is stranded again
    after each re-request: re-requested by every pass, oldest first, it crowded out the
    Orders behind it. The least re-requested go first, and after MAX_REREQUESTS it is left
    to an operator."""
    old, newer = "801000000000001AAA", "801000000000002AAA"
    plan = Plan(undecided=[old, newer], candidates={
        old: {"LastModifiedDate": "2026-01-01T00:00:00.000+0000"},
        newer: {"LastModifiedDate": "2026-01-02T00:00:00.000+0000"}})
    r = make(monkeypatch, plan, max_per_pass=1)
    chosen = []
    for _ in range(2 * rec.MAX_REREQUESTS + 1):
        r._pass("periodic", older_than_s=0.0)
        written: list = []
        r.write_due(written.extend)
        chosen.append([key.decode() for _topic, key, _v, _h in written])
    assert chosen[:2] == [[old], [newer]]  # not the oldest twice in a row
    assert sum(c == [old] for c in chosen) == rec.MAX_REREQUESTS
    assert sum(c == [newer] for c in chosen) == rec.MAX_REREQUESTS
    assert chosen[-1] == []  # both left to an operator


def test_a_connector_starting_re_arms_only_a_recent_gap(monkeypatch):
    """The last gap recorded within GAP_REARM_S is planned again at start-up, with the time
    it was found as the pass's bound; an older one, none, or a gaps topic that cannot be read
    plans nothing (and the start goes on)."""
    import time
    from datetime import UTC, datetime
    from types import SimpleNamespace

    from common.errors import KafkaError
    from connectors import source

    fake = SimpleNamespace(reconciler=object(), _rearm_at=None, position=None,
                           kafka=KafkaSettings.load({}, topic_prefix="t."), codec=None)
    now = time.time()

    def gap(age_s: float) -> dict:
        at = datetime.fromtimestamp(now - age_s, tz=UTC)
        return {"detected_at": at, "error_code": "replay id invalid",
                "last_good_replay_id": b"\x01\x02"}
    for found in (gap(rec.GAP_REARM_S + 60), None, KafkaError("timed out")):
        def load(*_a, found=found, **_kw):
            if isinstance(found, Exception):
                raise found
            return found
        monkeypatch.setattr(source, "load_last_gap", load)
        source.Connector._rearm_gap(fake)  # type: ignore[arg-type]
    assert fake._rearm_at is None
    monkeypatch.setattr(source, "load_last_gap", lambda *_a, **_kw: gap(3600))
    source.Connector._rearm_gap(fake)  # type: ignore[arg-type]
    # armed for the pass once the stream answers (Connector._handle), its time the gap's
    assert abs(fake._rearm_at - (now - 3600)) < 0.01


def test_a_restart_after_a_latest_gap_bounds_its_pass_at_the_position_committed_since(
        monkeypatch):
    """The instance that met the gap resubscribed with LATEST, committed a position from that
    stream and stopped before its pass ran: what was published between the gap's detection
    and the LATEST stream's acceptance was delivered by no stream. The successor resumes
    from the position (no LATEST of its own), so its pass must reach past the detection to
    the position's commit, which followed that acceptance; a position committed before the
    gap does not move the bound."""
    import time
    from datetime import UTC, datetime
    from types import SimpleNamespace

    from connectors import source
    from connectors.offsets import Position

    now = time.time()
    detected = now - 2 * 86400
    window = source.LATEST_ACCEPT_WITHIN_S
    cases = [  # policy, the position's commit after the detection, the pass's bound
        ("LATEST", 40, 40),
        ("LATEST", -40, 0),  # committed before the gap: the detection
        # the predecessor ran on for a day: the acceptance was within the window, not
        # there (a pass up to its last commit re-requested what was dead-lettered since)
        ("LATEST", 86400, window),
        ("EARLIEST", 40, 0),  # an EARLIEST stream replays what the gap skipped: no hole
    ]
    for policy, committed, bound in cases:
        gap = {"detected_at": datetime.fromtimestamp(detected, tz=UTC), "policy": policy,
               "error_code": "latest.resubscribed", "last_good_replay_id": b"\x01"}
        monkeypatch.setattr(source, "load_last_gap", lambda *_a, gap=gap, **_kw: gap)
        fake = SimpleNamespace(
            reconciler=object(), _rearm_at=None,
            position=Position(b"\x02", "KEEPALIVE", int((detected + committed) * 1000)),
            kafka=KafkaSettings.load({}, topic_prefix="t."), codec=None)
        source.Connector._rearm_gap(fake)  # type: ignore[arg-type]
        assert abs(fake._rearm_at - (detected + bound)) < 0.01, (
            policy, committed, fake._rearm_at - detected)


def test_two_gaps_not_yet_passed_are_passed_once_up_to_the_later(monkeypatch):
    """A stored gap re-armed once the stream answers must not narrow the pass of a gap
    found meanwhile: the later bound covers the earlier gap's Orders too."""
    r = make(monkeypatch, Plan())
    r._clock = lambda: 2_000.0
    r.gap_recorded()
    r.gap_recorded(at=1_000.0)
    assert r._gap_at == 2_000.0


def test_a_pass_due_while_a_plan_is_being_written_waits_for_the_write(monkeypatch):
    """The plan left ``_ready`` when its write began, so the planning thread planned again
    while that transaction was open — and a read_committed reader does not see its
    re-requests yet: the same Orders were planned and written twice (counted twice: the
    "re-requested 3 times" error after two real attempts). The pass waits for the write and
    runs after it, finding the Orders requested."""
    import threading

    oid = "801000000000001AAA"
    clock = [0.0]
    committed: set[str] = set()  # what a read_committed reader sees
    passes: list[float] = []

    def find_stranded(*_a, **_kw):
        passes.append(clock[0])
        return Plan(activating=1, no_request=[] if oid in committed else [oid],
                    candidates={oid: {"LastModifiedDate": "2026-01-01T00:00:00.000+0000"}})
    r = make(monkeypatch, Plan())
    monkeypatch.setattr(rec, "find_stranded", find_stranded)
    r._clock = lambda: clock[0]

    def one_turn() -> None:
        """One turn of the planning thread (``_run``), the periodic pass due in it."""
        waits = [0]

        def wait(timeout=None):
            clock[0] += r.settings.reconcile_interval_s + 1.0
            waits[0] += 1
            if waits[0] > 1:
                r._stop.set()
            return True
        monkeypatch.setattr(r._wake, "wait", wait)
        r._stop.clear()
        r._run()

    r._pass("periodic", older_than_s=0.0)
    entered, release = threading.Event(), threading.Event()
    writes: list[int] = []

    def slow_write(records):  # the connector's transaction, open for a while
        entered.set()
        assert release.wait(10)
        writes.append(len(records))
        committed.add(oid)
    writer = threading.Thread(target=r.write_due, args=(slow_write,))
    writer.start()
    try:
        assert entered.wait(10)
        one_turn()  # the periodic timer is due while the transaction is open
        assert len(passes) == 1, "a pass planned while the last plan was being written"
    finally:
        release.set()
        writer.join(10)
    assert r.write_due(slow_write) == 0
    one_turn()  # the pass put off runs now, and finds the Order requested
    assert len(passes) == 2
    assert r.write_due(slow_write) == 0
    assert writes == [1]
    assert r._requested[oid] == 1


def _simulated_reconciler(clock: list[float], *, until: float) -> Reconciler:
    """A reconciler (CONNECTOR_RECONCILE_INTERVAL_S: 600) on the simulated ``clock``: its
    waits advance the clock, and its stop is set once the clock reaches ``until``."""

    class Simulated:
        def wait(self, timeout: float | None = None) -> bool:
            clock[0] += timeout or 0.0
            return self.is_set()

        def is_set(self) -> bool:
            return clock[0] >= until

        def set(self) -> None:
            pass

        def clear(self) -> None:
            pass
    r = Reconciler(KafkaSettings.load({}, topic_prefix="t."), ConnectorSettings.load({}),
                   sf=None, worker_group="t.w",  # type: ignore[arg-type]
                   written=lambda: 0, clock=lambda: clock[0])
    r._stop, r._wake = Simulated(), Simulated()  # type: ignore[assignment]
    return r


def test_a_gap_pass_salesforce_keeps_refusing_backs_off_and_lets_periodic_passes_run(
        monkeypatch):
    """Salesforce refusing every pass's query (the day's API limit spent, a field missing):
    the failed gap pass was tried again at each turn — about every 11 s, 328 queries in an
    hour — and no periodic pass ran meanwhile. An hour on a simulated clock."""
    clock = [0.0]
    passes: list[str] = []

    def refused(*_args, **kwargs):
        passes.append("gap" if kwargs.get("older_than_s") == 0.0 else "periodic")
        raise RuntimeError("Salesforce 400 INVALID_FIELD: No such column")
    monkeypatch.setattr(rec, "find_stranded", refused)
    r = _simulated_reconciler(clock, until=3600.0)  # an hour
    r.gap_recorded(at=0.0)
    r._run()
    assert 3 <= passes.count("gap") <= 12, passes
    assert passes.count("periodic") >= 4, passes
    assert r._gap_at == 0.0  # still to be passed


def test_a_gap_pass_is_due_again_once_a_periodic_pass_gets_through(monkeypatch):
    """Salesforce refusing every query for half an hour: the failed gap pass backs off up to
    the 600 s interval. Once a periodic pass gets through, Salesforce answers again: the gap
    pass waiting out its backoff runs next (after its settle wait), not when its backoff
    ends (up to an interval later)."""
    clock = [0.0]
    passes: list[tuple[str, float, bool]] = []
    recovered_at = 1790.0

    def find(*_args, **kwargs):
        answered = clock[0] >= recovered_at
        passes.append(("gap" if kwargs.get("older_than_s") == 0.0 else "periodic",
                       clock[0], answered))
        if not answered:
            raise RuntimeError("Salesforce 403 REQUEST_LIMIT_EXCEEDED")
        return Plan()
    monkeypatch.setattr(rec, "find_stranded", find)
    r = _simulated_reconciler(clock, until=2700.0)  # 45 minutes
    r.gap_recorded(at=0.0)
    r._run()
    periodic_ok = next(at for kind, at, ok in passes if kind == "periodic" and ok)
    gap_ok = next(at for kind, at, ok in passes if kind == "gap" and ok)
    assert gap_ok - periodic_ok <= 30.0, passes  # its settle wait; 121 s before
    assert r._gap_at is None  # passed
