"""Applying a ``make chaos`` fault plan to a running pipeline (:mod:`bench.chaos`): kills,
pauses and cuts at their times, a cluster node picked by the role it holds at that moment,
processes that died on their own restarted, and the wait until every Order settles."""

from __future__ import annotations

import time
from typing import Any

from bench.chaos_plan import BROKER, Fault
from bench.chaos_report import log_lines
from bench.harness import Pipeline

PIPELINE_PROCESSES = ("connector", "worker", "sink")


def execute(p: Pipeline, plan: list[Fault], processes: tuple[str, ...],
             timeouts: dict[str, float], started: float,
             log: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Apply the plan in time order; returns the faults as applied and unplanned restarts.
    Waits until the last pause has ended."""
    applied: list[dict[str, Any]] = []
    restarts: list[dict[str, Any]] = []
    for fault in plan:
        while time.monotonic() - started < fault.at_s:
            restarts += revive(p, processes, started)
            time.sleep(0.2)
        name, entry = _victim(p, fault)
        entry = {"at_s": round(time.monotonic() - started, 1), "action": fault.action,
                 "process": name, **entry}
        where = f" ({entry['target']}: node {entry['node']})" if "target" in entry else ""
        if fault.action == "kill":
            log(f"  t={entry['at_s']:6.1f}s  SIGKILL {name}{where}")
            p.kill(name)
            time.sleep(fault.down_s)
            p.restart(name)
            entry["down_s"] = round(fault.down_s, 1)
        elif fault.action == "cut":
            timeout = _timeout_of(p, fault.process, timeouts)
            log(f"  t={entry['at_s']:6.1f}s  CUT {name} off the brokers for "
                f"{fault.down_s:.0f}s (its timeout: {timeout:.0f}s)")
            p.cut(name, fault.down_s)
            entry.update(seconds=round(fault.down_s, 1), timeout_s=timeout,
                         past_timeout=fault.down_s > timeout)
        else:
            timeout = _timeout_of(p, fault.process, timeouts)
            log(f"  t={entry['at_s']:6.1f}s  SIGSTOP {name}{where} for {fault.down_s:.0f}s "
                f"(its timeout: {timeout:.0f}s)")
            try:
                p.pause(name, fault.down_s)
            except (RuntimeError, ProcessLookupError) as exc:  # it had just died on its own
                entry["skipped"] = str(exc)
            entry.update(seconds=round(fault.down_s, 1), timeout_s=timeout,
                         past_timeout=fault.down_s > timeout and "skipped" not in entry)
        applied.append(entry)
    while p.paused() or p.cut_off():
        restarts += revive(p, processes, started)
        time.sleep(0.5)
    return applied, restarts


def _timeout_of(p: Pipeline, process: str, timeouts: dict[str, float]) -> float:
    """The timeout after which the rest of the system gives ``process`` up."""
    if process == BROKER and p.cluster is None:  # the only broker: clients' sessions expire
        return timeouts["worker"]
    return timeouts[process.rstrip("0123456789")]


def _victim(p: Pipeline, fault: Fault) -> tuple[str, dict[str, Any]]:
    """The process to hit; for a cluster, the node holding the fault's role right now."""
    if fault.process != BROKER or p.cluster is None:
        return fault.process, {}
    role = fault.target or "requests-leader:0"
    node = _holder(p, role)
    entry: dict[str, Any] = {"target": role, "node": node}
    if node is None or p.pid(f"kafka{node}") is None:  # unknown now: any running node
        node = min(n for n, pid in p.cluster.running().items() if pid)
        entry.update(node=node, fallback=True)
    return f"kafka{node}", entry


def _holder(p: Pipeline, role: str) -> int | None:
    from common.settings import SinkSettings, WorkerSettings

    assert p.cluster is not None
    kind, _, partition = role.partition(":")
    try:
        if kind == "requests-leader":
            return p.cluster.leader(p.kafka.requests, int(partition))
        if kind == "outcomes-leader":
            return p.cluster.leader(p.kafka.outcomes, int(partition))
        group = (WorkerSettings.load({}).app_id if kind == "worker-coordinator"
                 else SinkSettings.load({}).group_id)
        return p.cluster.coordinator(p.kafka.topic(group))
    except Exception:  # noqa: BLE001 - an unanswered question: fall back to any node
        return None


def settle(p: Pipeline, approved: list[str], processes: tuple[str, ...], started: float,
            timeout: float) -> tuple[list[dict[str, Any]], bool]:
    """Wait until every approved Order is final in Salesforce, then until WHMCS has been
    quiet for :data:`QUIET_S` (a process resumed at the last fault may still act: a queued
    call, bytes a cut held). Returns the restarts made and whether it settled."""
    deadline = time.monotonic() + timeout
    restarts: list[dict[str, Any]] = []
    settled = False
    while time.monotonic() < deadline:
        restarts += revive(p, processes, started)
        rows = p.wait_settled(approved, timeout=5, poll=1)
        if len(rows) == len(approved) and all(
                r.get("Activation_Status__c") in ("Provisioned", "Failed") for r in rows.values()):
            settled = True
            break
    calls, quiet_since = p.whmcs.calls(), time.monotonic()
    while settled and time.monotonic() - quiet_since < QUIET_S \
            and time.monotonic() < deadline + QUIET_LIMIT_S:
        time.sleep(1.0)
        restarts += revive(p, processes, started)
        now_calls = p.whmcs.calls()
        if now_calls != calls:
            calls, quiet_since = now_calls, time.monotonic()
    if time.monotonic() - quiet_since < QUIET_S:  # WHMCS still busy at the limit
        settled = False
    return restarts, settled


QUIET_S = 20.0  # past a WHMCS call's timeout plus a hang, and a worker's session timeout
QUIET_LIMIT_S = 120.0


def revive(p: Pipeline, processes: tuple[str, ...] = PIPELINE_PROCESSES,
            started: float = 0.0) -> list[dict[str, Any]]:
    """Restart a pipeline process that died on its own (what the supervisor does in prod);
    returns which, when and with what exit code, with the end of its log."""
    revived = []
    for name in processes:
        proc = p.procs.get(name)
        if proc is not None and proc.poll() is not None:
            revived.append({"process": name, "exit": proc.returncode,
                            "at_s": round(time.monotonic() - started, 1),
                            "log_tail": log_lines(p, name)[-5:]})
            p.start(name)
    return revived
