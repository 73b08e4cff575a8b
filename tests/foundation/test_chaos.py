"""make chaos's harness without a pipeline: the seeded fault plan, the pause mechanics."""

from __future__ import annotations

import random
import subprocess
import time
from pathlib import Path

import pytest

from bench.chaos import ChaosRun, parser, pause_settings
from bench.chaos_plan import BROKER, BROKER_ROLES, RECOVER_S, make_plan
from bench.harness import Pipeline

VICTIMS = ["connector", "worker", "sink", "worker2", BROKER]


def plan(seed: int = 7, **kw):
    args = dict(duration_s=200.0, kills=10, pauses=6, pause_s=30.0, kill_victims=VICTIMS,
                pause_victims=VICTIMS, cluster=True, partitions=3)
    args.update(kw)
    return make_plan(seed, **args)


def test_the_same_seed_gives_the_same_plan_and_another_seed_another():
    assert plan(7) == plan(7)
    assert plan(7) != plan(8)


def test_a_kill_only_plan_is_the_one_make_chaos_drew_before_pauses():
    """Old seeds (the README's published runs) still repeat their kill schedule."""
    rng = random.Random(47047)
    legacy = sorted((rng.uniform(0.05, 0.95) * 200, rng.choice(VICTIMS)) for _ in range(20))
    downs = [rng.uniform(0.5, 3.0) for _ in legacy]
    got = make_plan(47047, duration_s=200, kills=20, pauses=0, pause_s=0,
                    kill_victims=VICTIMS, pause_victims=VICTIMS)
    assert [(f.at_s, f.process, f.down_s) for f in got] == [
        (at, v, d) for (at, v), d in zip(legacy, downs, strict=True)]
    assert {f.action for f in got} == {"kill"}


def _group(victim: str) -> str:
    return "worker" if victim.startswith("worker") else victim


def _alone(faults, fault, seed) -> None:
    """No other fault of ``fault``'s victim (or of another worker) overlaps it."""
    end = fault.at_s + fault.down_s + RECOVER_S
    for other in faults:
        if other is fault or _group(other.process) != _group(fault.process):
            continue
        other_end = other.at_s + other.down_s + RECOVER_S
        assert other_end <= fault.at_s or other.at_s >= end, (seed, fault, other)


def test_pauses_last_pause_s_and_never_overlap_their_victims_other_faults():
    """Nor another worker's: a paused worker's partitions must have a live worker to go to."""
    for seed in range(40):
        faults = plan(seed)
        assert sum(f.action == "pause" for f in faults) == 6
        assert sum(f.action == "kill" for f in faults) == 10
        assert [f.at_s for f in faults] == sorted(f.at_s for f in faults)
        for pause in (f for f in faults if f.action == "pause"):
            assert pause.down_s == 30.0 and pause.process in VICTIMS
            _alone(faults, pause, seed)


def test_cuts_come_after_the_rest_of_the_plan_and_keep_the_pause_rules():
    """A plan without cuts is the plan drawn before cuts existed; cuts never hit a broker
    and, like pauses, never overlap another fault of their victim (or of another worker)."""
    for seed in range(40):
        base = plan(seed)
        assert plan(seed, cuts=0, cut_s=30.0, cut_victims=VICTIMS[:4]) == base
        faults = plan(seed, cuts=4, cut_s=30.0, cut_victims=VICTIMS[:4])
        assert [f for f in faults if f.action != "cut"] == base
        cuts = [f for f in faults if f.action == "cut"]
        assert len(cuts) == 4 and all(c.process != BROKER and c.down_s == 30.0 for c in cuts)
        for cut in cuts:
            _alone(faults, cut, seed)


def test_broker_faults_in_a_cluster_aim_at_a_leader_or_coordinator_role():
    roles = set()
    for seed in range(20):
        for f in plan(seed):
            if f.process == BROKER:
                role, _, partition = (f.target or "").partition(":")
                assert role in BROKER_ROLES
                if role.endswith("leader"):
                    assert 0 <= int(partition) < 3
                roles.add(role)
            else:
                assert f.target is None
    assert roles == set(BROKER_ROLES)
    assert all(f.target is None for f in plan(3, cluster=False))


def test_pauses_of_only_workers_move_later_rather_than_overlap():
    """--break-lease: three 30 s pauses of two workers in a 24 s approval phase."""
    faults = make_plan(1, duration_s=24, kills=0, pauses=3, pause_s=30,
                       kill_victims=VICTIMS, pause_victims=["worker", "worker2"])
    assert [f.action for f in faults] == ["pause"] * 3  # all three, none dropped
    assert {f.process for f in faults} <= {"worker", "worker2"}
    times = [f.at_s for f in faults]
    assert all(b - a >= 30 + RECOVER_S for a, b in zip(times, times[1:], strict=False))


def test_runs_with_pauses_lower_the_timeouts_they_must_outlast():
    env, timeouts = pause_settings()
    assert env["WORKER_SESSION_TIMEOUT_S"] == "10.0"
    assert env["SINK_SESSION_TIMEOUT_MS"] == "10000"
    assert timeouts["worker"] == timeouts["sink"] == 10.0
    assert timeouts["connector"] in (10.0, 60.0)  # 60: connectors/writer.py's hard-coded one
    assert timeouts[BROKER] < 30.0


@pytest.mark.parametrize(("flags", "name"), [
    ({}, "chaos.json"), ({"workers": 2}, "chaos-2-workers.json"),
    ({"workers": 2, "brokers": 3}, "chaos-2-workers-3-brokers.json"),
    ({"break_lease": True, "workers": 2}, "chaos-broken-lease.json"),
    ({"workers": 2, "brokers": 3, "cuts": 4}, "chaos-2-workers-3-brokers-cuts.json"),
    ({"workers": 2, "brokers": 3, "sf_faults": True}, "chaos-2-workers-3-brokers-sf-faults.json"),
    ({"break_guard": True}, "chaos-broken-guard.json"),
    ({"break_repair": True, "workers": 2, "cuts": 3}, "chaos-broken-repair.json")])
def test_each_kind_of_run_has_its_own_result_file(flags, name):
    assert ChaosRun(**flags).result_file().name == name


def test_the_command_line_makes_the_run_it_names():
    run = ChaosRun.from_args(parser().parse_args(
        ["--orders", "2000", "--workers", "2", "--brokers", "3", "--pause-workers-only",
         "--cuts", "3", "--kills", "6", "--seed", "7707", "--no-broker-kills",
         "--break-repair", "--cut-s", "20"]))
    assert run == ChaosRun(orders=2000, kills=6, seed=7707, workers=2, brokers=3,
                           pause_workers_only=True, cuts=3, cut_s=20.0, broker_kills=False,
                           break_repair=True)
    assert run.broken == "repair"
    assert ChaosRun.from_args(parser().parse_args([])).broker_kills


def test_a_run_as_made_takes_the_defaults_its_faults_need():
    plain, env, timeouts = ChaosRun(kills=3).as_made()
    assert (plain.pause_s, plain.whmcs_latency_ms, timeouts) == (None, None, {})
    assert "WORKER_SESSION_TIMEOUT_S" not in env
    lease_off, env, timeouts = ChaosRun(break_lease=True, kills=0).as_made()
    assert (lease_off.workers, lease_off.pauses) == (2, 3)  # what the lease needs to show
    assert lease_off.pause_s == 3 * min(timeouts["worker"], timeouts["sink"],
                                        timeouts["connector"])
    assert (lease_off.whmcs_latency_ms, env["WORKER_WHMCS_PARALLELISM"]) == (60, "2")
    cuts, _, _ = ChaosRun(cuts=2, cut_s=12, whmcs_latency_ms=0).as_made()
    assert (cuts.cut_s, cuts.pauses, cuts.whmcs_latency_ms) == (12, 0, 0)
    with pytest.raises(ValueError, match="own broker"):
        ChaosRun(cuts=1, bootstrap="127.0.0.1:9092")
    assert [f.action for f in lease_off.plan()] == ["pause"] * 3
    assert {f.process for f in lease_off.plan()} <= {"worker", "worker2"}


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def _until(what: str, check, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_pause_stops_the_process_group_and_resumes_it(tmp_path):
    p = Pipeline(tmp_path)  # not started: only its process bookkeeping is used
    proc = subprocess.Popen(["sleep", "300"], start_new_session=True)
    p.procs["sleeper"] = proc
    try:
        p.pause("sleeper")
        _until("stopped", lambda: _state(proc.pid) == "T")
        assert p.paused() == ["sleeper"]
        p.resume("sleeper")
        _until("running again", lambda: _state(proc.pid) != "T")
        assert p.paused() == []

        p.pause("sleeper", seconds=0.2)  # SIGCONT by the timer
        _until("resumed by its timer", lambda: not p.paused() and _state(proc.pid) != "T")
        assert [name for _t, name, _s in p.pauses] == ["sleeper", "sleeper"]

        p.pause("sleeper", seconds=300)
        p.kill("sleeper")  # a kill ends the pause: nothing left to resume
        assert p.paused() == [] and proc.poll() is not None
        with pytest.raises(RuntimeError):
            p.pause("sleeper")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# --break lease: tests/foundation/test_broken_worker.py (in subprocesses: it patches modules)


def test_break_repair_makes_the_repair_look_at_nothing_and_log_what_it_would_have(
        monkeypatch, caplog):
    import asyncio
    import types

    from bench import broken_worker
    from streams import repair

    # the patch replaces class attributes: undone after the test
    monkeypatch.setattr(repair.ChangelogRepair, "foreign", repair.ChangelogRepair.foreign)
    monkeypatch.setattr(repair.ChangelogRepair, "check_idle", repair.ChangelogRepair.check_idle)
    from streams.faust_seam import DurableTable

    monkeypatch.setattr(DurableTable, "_suspect", DurableTable._suspect)
    monkeypatch.setattr(DurableTable, "_holds", DurableTable._holds)
    monkeypatch.setattr(DurableTable, "_stamped_late", DurableTable._stamped_late)
    assert "switched off" in broken_worker.break_repair()
    fixer = repair.ChangelogRepair(None, None, None)  # type: ignore[arg-type]
    with caplog.at_level("WARNING", logger="bench.broken_worker"):
        fixer.foreign(types.SimpleNamespace(name="idem"), 2, 10, 14, 7)
    assert [r.getMessage() for r in caplog.records] == [
        "repair off: would have looked at table idem partition 2 offsets 10-14"]
    assert not fixer._queue and fixer._task is None
    assert asyncio.run(fixer.check_idle([object()], lambda *_: 99)) == 0
    # the late writer's side: its own records among another writer's are not remembered
    table = types.SimpleNamespace(name="intents", _suspects={}, _rebuild=set())
    caplog.clear()
    with caplog.at_level("WARNING", logger="bench.broken_worker"):
        DurableTable._suspect(table, 1, [5, 6], 7)  # type: ignore[arg-type]
    assert table._suspects == {} and table._rebuild == set()
    assert DurableTable._holds(table, 1) is False  # type: ignore[arg-type]
    # the stamp: no record is judged late by it
    late = types.SimpleNamespace(partition=1, offset=9, headers=[("sfprov-writer", b"5 w")])
    table.writer, table._claims = "me", {1: [(3, 8, "owner")]}
    assert DurableTable._stamped_late(table, late) is None  # type: ignore[arg-type]
    assert [r.getMessage() for r in caplog.records] == [
        "repair off: would have looked at table intents partition 1: 2 record(s) of ours "
        "among another writer's (late writer's side)"]


class _Whmcs:
    def __init__(self, orders):
        self.orders = orders  # Salesforce Order id → [(WHMCS id, status)]

    def counters(self):
        return {"orders_by_marker": {k: len(v) for k, v in self.orders.items() if v}}

    def orders_for(self, oid):
        return [{"id": i, "status": s} for i, s in self.orders.get(oid, [])]

    def active_orders_by_marker(self):
        return {oid: {i for i, s in orders if s == "Active"}
                for oid, orders in self.orders.items()}

    def active_services_by_marker(self):  # WHMCS order n holds service 10 n
        return {oid: {i: {10 * i} for i in ids}
                for oid, ids in self.active_orders_by_marker().items()}


def test_invariants_hold_salesforce_and_whmcs_to_each_other_order_by_order():
    """Counting duplicates and 'final in Salesforce' let through an Order Provisioned whose
    WHMCS order stayed Pending (or does not exist), one Failed whose order went Active, a
    provisionable Order that ended Failed, and a seeded broken one that ended Provisioned."""
    rows = {"ok": ("Provisioned", 11), "pending": ("Provisioned", 12), "none": ("Provisioned", 13),
            "failed_active": ("Failed", None), "failed_clean": ("Failed", None),
            "broken_ok": ("Failed", None), "broken_bad": ("Provisioned", 17)}
    whmcs = {"ok": [(11, "Active")], "pending": [(12, "Pending")], "none": [],
             "failed_active": [(14, "Active")], "failed_clean": [(15, "Cancelled")],
             "broken_ok": [], "broken_bad": [(17, "Active")]}
    p = object.__new__(Pipeline)
    p.whmcs = _Whmcs(whmcs)
    p.kills = []
    p.sf_orders = lambda ids: {oid: {"Activation_Status__c": rows[oid][0],
                                     "WHMCS_Order_Id__c": rows[oid][1]} for oid in ids}
    p.provisionable = lambda ids: [oid for oid in ids if not oid.startswith("broken")]
    report = p.invariants(list(rows))
    assert {d["order"] for d in report["disagreeing_orders"]} == {
        "pending", "none", "failed_active"}
    assert report["disagreeing"] == 3
    assert report["not_provisioned"] == 2  # failed_active, failed_clean
    assert report["broken_not_failed"] == 1
    # Failed, yet WHMCS holds an order (Active, or Cancelled: neither disagreeing nor a
    # duplicate before) — the at-most-once rule's zero for an Order that failed
    assert report["failed_with_whmcs_order_detail"] == ["failed_active", "failed_clean"]
    assert report["failed_with_whmcs_order"] == 2
    assert report["duplicates"] == 0 and report["missing"] == 0  # what it checked before


def test_invariants_see_an_opportunity_the_write_back_left_behind():
    """The write-back's other half — the Opportunity of a Provisioned Order Active, naming a
    service of its WHMCS order — was never read: a sink that dropped or dead-lettered the
    Opportunity's record passed. Two Orders sharing an Opportunity: either one's service."""
    rows = {"ok": ("Provisioned", 11, "006A"), "stage": ("Provisioned", 12, "006B"),
            "service": ("Provisioned", 13, "006C"), "shared1": ("Provisioned", 14, "006D"),
            "shared2": ("Provisioned", 15, "006D"), "failed": ("Failed", None, "006E")}
    whmcs = {oid: [(named, "Active")] for oid, (_s, named, _o) in rows.items() if named}
    opportunities = {"006A": ("Active", 110.0), "006B": ("Post Processing", None),
                     "006C": ("Active", 999.0), "006D": ("Active", 150.0),
                     "006E": ("Post Processing", None)}
    queries = []

    class Sf:
        def query(self, soql):
            queries.append(soql)
            return {"records": [{"Id": o, "StageName": st, "WHMCS_Service_ID__c": sv}
                                for o, (st, sv) in opportunities.items() if f"'{o}'" in soql]}
    p = object.__new__(Pipeline)
    p.whmcs, p.sf, p.kills = _Whmcs(whmcs), Sf(), []
    p.sf_orders = lambda ids: {oid: {"Activation_Status__c": rows[oid][0],
                                     "WHMCS_Order_Id__c": rows[oid][1],
                                     "OpportunityId": rows[oid][2]} for oid in ids}
    p.provisionable = lambda ids: [oid for oid in ids if oid != "failed"]
    report = p.invariants(list(rows))
    assert {b["opportunity"] for b in report["opportunities_behind_detail"]} == {"006B", "006C"}
    assert report["opportunities_behind"] == 2
    assert "'006E'" not in queries[0]  # a Failed Order's Opportunity is not written


def test_the_verdict_fails_a_run_whose_reconciliation_repaired_a_lost_order():
    """Chaos loses no event on purpose: an Order the connector had to request again was lost
    by the pipeline and repaired behind the check's back; with a clean figure otherwise the
    run passed."""
    from bench.chaos import verdict

    clean = {"duplicates": 0, "missing": 0, "outcomes_contradicting": 0, "disagreeing": 0,
             "not_provisioned": 0, "broken_not_failed": 0, "opportunities_behind": 0,
             "rerequested": 0, "settled": True, "approved": 10, "errors": [],
             "faults_ok": True}
    assert verdict(clean, 10)
    for key, bad in (("rerequested", 1), ("opportunities_behind", 1), ("duplicates", 1),
                     ("settled", False), ("approved", 9), ("errors", ["x"]),
                     ("failed_with_whmcs_order", 1)):
        assert not verdict({**clean, key: bad}, 10), key


def test_the_last_quiet_window_outlasts_the_age_a_sweep_acts_at():
    """The run waits for quiet before its verdict so that a sweep's late send (an unsent
    decision sent again, a pending intent's outcome) is read and judged; the window was
    the sweep interval + 10 s (70 s) while the sweep acts only on entries
    WORKER_RECOVERY_AFTER_S old (600 s by default): no run could see one."""
    import types

    from bench.chaos import ChaosRun
    from bench.chaos_faults import quiet_window
    from common.settings import WorkerSettings

    _run, env, _timeouts = ChaosRun(orders=7526, brokers=3, workers=2, pauses=3, kills=6,
                                    cuts=2).as_made()
    worker = WorkerSettings.load(env)
    p = types.SimpleNamespace(env=lambda name: env)
    window = quiet_window(p)  # type: ignore[arg-type]
    assert window >= worker.recovery_after_s + worker.sweep_interval_s
    assert window <= 300.0  # the run waits for it: the age is lowered in chaos runs
