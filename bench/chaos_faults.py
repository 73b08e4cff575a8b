"""Applying a ``make chaos`` fault plan to a running pipeline (:mod:`bench.chaos`): kills,
pauses and cuts at their times, a cluster node picked by the role it holds at that moment,
processes (and broker nodes) that died on their own restarted, and the wait until every
Order settles.

The plan's rules hold on the real timeline, not only on paper: a killed victim is restarted
in the background (:class:`_Restarts`; a broker node's restart waits until the cluster
lists it, up to 120 s, and the plan goes on meanwhile), and a fault whose victim is still
out — down, paused, cut off, or within :data:`~bench.chaos_plan.RECOVER_S` of coming back
(:func:`~bench.chaos_plan.out_together`) — waits until it is free instead of firing
anyway. Each applied fault says how late it came (``late_s``);
:func:`schedule_violations` checks the timeline afterwards (expected empty)."""

from __future__ import annotations

import contextlib
import heapq
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer

from bench import chaos_plan
from bench.chaos_plan import BROKER, Fault, out_together, victim_of
from bench.chaos_report import log_lines
from bench.harness import FINAL_STATES, Pipeline

PIPELINE_PROCESSES = ("connector", "worker", "sink")
Approvals = Callable[[], tuple[bool, list[str]]]  # (still approving, the ids approved so far)


@dataclass
class _Out:
    """A victim out of play on the real timeline: from ``start`` until ``end`` (seconds after
    the first approval; None while its restart is still under way)."""

    action: str
    process: str
    start: float
    end: float | None


class _Restarts:
    """Restarts in threads of their own: a killed victim's after its down time, a broker node
    found dead. :func:`execute` never waits on one; each closes its victim's :class:`_Out`
    at its end + ``recover_s`` and notes ``restarted_at_s`` (or ``restart_error``)."""

    def __init__(self, p: Pipeline, now: Callable[[], float], recover_s: float) -> None:
        self.p, self.now, self.recover_s = p, now, recover_s
        self.threads: list[threading.Thread] = []
        self._down: set[str] = set()
        self._lock = threading.Lock()

    def start(self, name: str, after: float, out: _Out, entry: dict[str, Any]) -> None:
        with self._lock:
            self._down.add(name)
        thread = threading.Thread(target=self._run, args=(name, after, out, entry),
                                  name=f"chaos-restart-{name}", daemon=True)
        self.threads.append(thread)
        thread.start()

    def _run(self, name: str, after: float, out: _Out, entry: dict[str, Any]) -> None:
        time.sleep(after)
        try:
            self.p.restart(name)
        except Exception as exc:  # noqa: BLE001 - reported; revive tries again
            entry["restart_error"] = repr(exc)[:300]
        finally:
            done = self.now()
            entry["restarted_at_s"] = round(done, 1)
            out.end = done + self.recover_s
            with self._lock:
                self._down.discard(name)

    def down(self) -> set[str]:
        """The victims killed on purpose whose restart has not finished."""
        with self._lock:
            return set(self._down)

    def busy(self) -> bool:
        return any(t.is_alive() for t in self.threads)


#: how long past its due time a fault waits for its victim to be free before it is given up
#: (noted ``skipped``): a process dying again at every restart kept the run waiting for ever
FAULT_WAIT_MAX_S = 180.0


def execute(p: Pipeline, plan: list[Fault], processes: tuple[str, ...],
            timeouts: dict[str, float], started: float, log: Any, *,
            approvals: Approvals | None = None,
            recover_s: float | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Apply the plan in time order; returns the faults as applied and unplanned restarts.
    ``processes`` are watched for deaths of their own (broker nodes too, by name: ``kafka``,
    ``kafka1``..), also right before every fault. ``approvals``: whether Orders are still
    being approved, and which — each pause and cut then notes ``during_approvals`` and how
    many approved Orders were not final in Salesforce when it began (``not_final``).
    Returns once the last pause, cut and restart has ended. ``recover_s``: the plan's
    :data:`~bench.chaos_plan.RECOVER_S` unless given."""
    recover = chaos_plan.RECOVER_S if recover_s is None else recover_s

    def now() -> float:
        return time.monotonic() - started

    restarter = _Restarts(p, now, recover)
    outs: list[_Out] = []
    applied: list[dict[str, Any]] = []
    restarts: list[dict[str, Any]] = []
    counting: list[threading.Thread] = []
    held: set[int] = set()

    def found(name: str, entry: dict[str, Any]) -> None:  # died on its own: restart it
        out = _Out("kill", victim_of(name), now(), None)
        outs.append(out)
        if name.startswith(BROKER):  # waits until the node is back: in the background
            restarter.start(name, 0.0, out, entry)
        else:
            p.start(name)
            out.end = now() + recover

    def watch(skip: Iterable[str] = ()) -> list[dict[str, Any]]:
        return revive(p, processes, started, skip={*restarter.down(), *skip}, restart=found)

    pending = [(fault.at_s, i, fault) for i, fault in enumerate(plan)]
    heapq.heapify(pending)
    while pending:
        due, i, fault = pending[0]
        if now() < due:
            restarts += watch()
            time.sleep(max(0.0, min(0.2, due - now())))
            continue
        # right before the fault: a pipeline process a kill is due for is left to the kill
        # (it notes the exit: already_exited), any other death is revived and the victim
        # then rests like any restarted one
        restarts += watch([fault.process] if fault.action == "kill"
                          and not fault.process.startswith(BROKER) else [])
        free_at = _free_at(fault, outs, now())
        if (free_at is None or free_at > now()) and now() - fault.at_s > FAULT_WAIT_MAX_S:
            # its victim never came free (it dies again at each restart: a crash loop, or a
            # node that does not come back): noted as not applied, and the run goes on to
            # its verdict, which fails on it (bench.chaos: faults_ok)
            heapq.heappop(pending)
            waited = now() - fault.at_s
            log(f"  t={now():6.1f}s  {fault.action} of {fault.process} not applied: its "
                f"victim was out or recovering for {waited:.0f} s")
            applied.append({"action": fault.action, "process": fault.process,
                            "at_s": round(now(), 1), "late_s": round(waited, 1),
                            "skipped": f"victim never free for {waited:.0f} s (a crash loop?)"})
            continue
        if free_at is None or free_at > now():  # its victim is still out: wait, then again
            if i not in held:
                held.add(i)
                log(f"  t={now():6.1f}s  {fault.action} of {fault.process} (due at "
                    f"{fault.at_s:.1f}s) waits: its victim is out or recovering")
            heapq.heapreplace(pending, (free_at if free_at is not None else now() + 0.5,
                                        i, fault))
            continue
        heapq.heappop(pending)
        entry = _apply(p, fault, timeouts, now, log, restarter, outs, restarts, recover)
        entry["late_s"] = round(max(0.0, entry["at_s"] - fault.at_s), 1)
        if approvals is not None and fault.action != "kill":
            counting.append(_note_load(p, entry, approvals))
        applied.append(entry)
    while p.paused() or p.cut_off() or restarter.busy():
        restarts += watch()
        time.sleep(0.5)
    for thread in [*restarter.threads, *counting]:
        thread.join(timeout=120)
    return applied, restarts


def _free_at(fault: Fault, outs: list[_Out], now: float) -> float | None:
    """When ``fault``'s victim is free by the rules, from what is out now (None: not known
    yet, a restart is under way). Every :class:`_Out` began by now: free once all end."""
    ends = [now]
    for out in outs:
        if out_together(fault.action, fault.process, out.action, out.process):
            if out.end is None:
                return None
            ends.append(out.end)
    return max(ends)


def _apply(p: Pipeline, fault: Fault, timeouts: dict[str, float], now: Callable[[], float],
           log: Any, restarter: _Restarts, outs: list[_Out], restarts: list[dict[str, Any]],
           recover_s: float) -> dict[str, Any]:
    name, entry = _victim(p, fault)
    at = now()
    entry = {"at_s": round(at, 1), "action": fault.action, "process": name, **entry}
    where = f" ({entry['target']}: node {entry['node']})" if "target" in entry else ""
    if fault.action == "kill":
        log(f"  t={entry['at_s']:6.1f}s  SIGKILL {name}{where}")
        sent = p.kill(name)
        entry["down_s"] = round(fault.down_s, 1)
        if not sent:  # it had exited on its own: a crash, not this kill
            code = _exit_code(p, name)
            entry["already_exited"] = code
            log(f"  t={entry['at_s']:6.1f}s  {name} had already exited ({code})")
            restarts.append({"process": name, "exit": code, "at_s": entry["at_s"],
                             "log_tail": _log_tail(p, name), "found_by": "kill"})
        out = _Out("kill", fault.process, at, None)
        outs.append(out)
        restarter.start(name, fault.down_s, out, entry)
    elif fault.action == "cut":
        timeout = _timeout_of(p, fault.process, timeouts)
        log(f"  t={entry['at_s']:6.1f}s  CUT {name} off the brokers for "
            f"{fault.down_s:.0f}s (its timeout: {timeout:.0f}s)")
        p.cut(name, fault.down_s)
        outs.append(_Out("cut", fault.process, at, at + fault.down_s + recover_s))
        entry.update(seconds=round(fault.down_s, 1), timeout_s=timeout,
                     past_timeout=fault.down_s > timeout)
    else:
        timeout = _timeout_of(p, fault.process, timeouts)
        log(f"  t={entry['at_s']:6.1f}s  SIGSTOP {name}{where} for {fault.down_s:.0f}s "
            f"(its timeout: {timeout:.0f}s)")
        try:
            p.pause(name, fault.down_s)
            outs.append(_Out("pause", fault.process, at, at + fault.down_s + recover_s))
        except (RuntimeError, ProcessLookupError) as exc:  # it had just died on its own
            entry["skipped"] = str(exc)
        entry.update(seconds=round(fault.down_s, 1), timeout_s=timeout,
                     past_timeout=fault.down_s > timeout and "skipped" not in entry)
    return entry


def _note_load(p: Pipeline, entry: dict[str, Any], approvals: Approvals) -> threading.Thread:
    """``during_approvals`` now; ``not_final`` (approved Orders not yet Provisioned or Failed
    in Salesforce as the fault began) counted in the background, not to delay the plan."""
    still, ids = approvals()
    entry["during_approvals"] = still

    def count() -> None:
        try:
            rows = p.sf_orders_fields(ids, "Activation_Status__c")
            entry["not_final"] = sum(rows.get(oid, {}).get("Activation_Status__c")
                                     not in FINAL_STATES for oid in ids)
        except Exception as exc:  # noqa: BLE001 - reported instead of the count
            entry["not_final"] = None
            entry["not_final_error"] = repr(exc)[:200]

    thread = threading.Thread(target=count, name="chaos-not-final", daemon=True)
    thread.start()
    return thread


def _exit_code(p: Pipeline, name: str) -> int | None:
    proc = p.procs.get(name)
    return proc.returncode if proc is not None else None


def _log_tail(p: Pipeline, name: str) -> list[str]:
    """The end of a process's log; a broker node's server log (none when unreadable: a
    report line, not a reason to stop the run)."""
    with contextlib.suppress(Exception):
        if name.startswith(BROKER):
            return p._broker(name).log_file.read_text(errors="replace").splitlines()[-5:]
        return log_lines(p, name)[-5:]
    return []


def schedule_violations(applied: list[dict[str, Any]], unplanned: list[dict[str, Any]],
                        recover_s: float | None = None) -> list[str]:
    """Faults applied against the plan's rules on the real timeline (expected none): a fault
    that began while a victim it must not overlap (:func:`~bench.chaos_plan.out_together`)
    was down, paused, cut off or within ``recover_s`` of coming back — after a fault, or
    after a death of its own (``unplanned``). ``recover_s``: as :func:`execute`'s."""
    recover = chaos_plan.RECOVER_S if recover_s is None else recover_s
    tolerance = 0.15  # the report's times are rounded to 0.1 s
    outs: list[tuple[float, float, str, str, str]] = []  # start, end, action, process, what
    for e in unplanned:
        if e.get("found_by") != "kill":  # a kill's own window covers the one it found dead
            end = e.get("restarted_at_s", e["at_s"]) + recover
            outs.append((e["at_s"], end, "kill", e["process"], "its death of its own"))
    violations = []
    for e in applied:
        if "skipped" in e:
            continue
        for start, end, action, process, what in outs:
            if start <= e["at_s"] < end - tolerance and out_together(
                    e["action"], e["process"], action, process):
                violations.append(
                    f"t={e['at_s']:.1f}s {e['action']} of {e['process']} while {process} was "
                    f"out or recovering until t={end:.1f}s ({what} at t={start:.1f}s)")
        if e["action"] == "kill":
            end = e.get("restarted_at_s", e["at_s"] + e.get("down_s", 0.0)) + recover
        else:
            end = e["at_s"] + e.get("seconds", 0.0) + recover
        outs.append((e["at_s"], end, e["action"], e["process"], f"{e['action']}"))
    return violations


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
    # quiet: no WHMCS call and no new outcome record for QUIET_S, and for as long as a
    # worker's sweep may take to act (+ a margin): a sweep sends an unsent decision again
    # with no WHMCS call, and read before it, a contradiction it carries would go unseen
    quiet_s = max(QUIET_S, quiet_window(p))
    reader = Consumer(p.client_config(**{"group.id": "chaos-settle",
                                         "enable.auto.commit": False}))
    read_at: float | None = None  # the last time the outcomes' ends were read
    try:
        ends = _ends(reader, p.kafka.outcomes)
        if ends is not None:
            read_at = time.monotonic()
        marks = (p.whmcs.calls(), ends or {})
        quiet_since = time.monotonic()
        while settled and (time.monotonic() - quiet_since < quiet_s or read_at is None
                           or read_at < quiet_since + quiet_s - 5.0) \
                and time.monotonic() < deadline + QUIET_LIMIT_S + quiet_s:
            time.sleep(1.0)
            restarts += revive(p, processes, started)
            ends = _ends(reader, p.kafka.outcomes)
            if ends is None:  # not an answer: neither a change nor a quiet look
                ends = marks[1]
            else:
                read_at = time.monotonic()
            now_marks = (p.whmcs.calls(), ends)
            if now_marks != marks:
                marks, quiet_since = now_marks, time.monotonic()
    finally:
        reader.close()
    if time.monotonic() - quiet_since < quiet_s:  # still busy at the limit
        settled = False
    if read_at is None or read_at < quiet_since + quiet_s - 5.0:
        settled = False  # the outcomes' ends were not read over the quiet window
    return restarts, settled


def quiet_window(p: Pipeline) -> float:
    """How long a worker's sweep may take to act on an entry left behind, as its
    environment sets it: the age it acts at (``WORKER_RECOVERY_AFTER_S``), a sweep interval
    for the next sweep to come round, and a margin. (The sweep interval alone was 70 s
    against the default 600 s age: no run ever saw a sweep's late send.)"""
    from common.settings import WorkerSettings

    worker = WorkerSettings.load(p.env("worker"))
    return worker.recovery_after_s + worker.sweep_interval_s + 10.0


def _ends(reader: Any, topic: str) -> dict[int, int] | None:
    """The partitions' end offsets of ``topic``; None when the brokers do not answer (the
    next look asks again; a window with no answer at its end does not settle)."""
    from common.lag import end_offsets

    try:
        return {part: high for part, (_low, high) in end_offsets(reader, topic).items()}
    except Exception:  # noqa: BLE001 - a node away: not an answer, asked again
        return None


QUIET_S = 20.0  # past a WHMCS call's timeout plus a hang, and a worker's session timeout
QUIET_LIMIT_S = 120.0


def revive(p: Pipeline, processes: tuple[str, ...] = PIPELINE_PROCESSES,
           started: float = 0.0, *, skip: Iterable[str] = (),
           restart: Callable[[str, dict[str, Any]], None] | None = None
           ) -> list[dict[str, Any]]:
    """Restart a pipeline process or broker node (``kafka``, ``kafka1``..) among
    ``processes`` that died on its own (what the supervisor does in prod), except those in
    ``skip``; returns which, when and with what exit code (None for a node: not a child of
    ours), with the end of its log. ``restart`` restarts it instead (:func:`execute`: a
    node in the background)."""
    revived = []
    skipped = set(skip)
    for name in processes:
        if name in skipped:
            continue
        if name.startswith(BROKER):
            if p.pid(name) is not None:
                continue
            code = None
        else:
            proc = p.procs.get(name)
            if proc is None or proc.poll() is None:
                continue
            code = proc.returncode
        entry = {"process": name, "exit": code, "at_s": round(time.monotonic() - started, 1),
                 "log_tail": _log_tail(p, name)}
        revived.append(entry)
        if restart is not None:
            restart(name, entry)
        elif name.startswith(BROKER):
            p.restart(name)
        else:
            p.start(name)
    return revived
