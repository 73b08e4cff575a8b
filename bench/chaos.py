"""``make chaos``: approve Orders at a steady rate while killing and pausing processes, then check.

Runs the whole pipeline as separate processes (``bench.harness.Pipeline``: real broker,
both sandboxes, connector, worker, sink) with WHMCS latency and commit-then-hang faults on,
approves ``--orders`` Orders at ``--rate`` per second, and meanwhile follows a fault plan
drawn from ``--seed`` (``bench.chaos_plan``: the same seed gives the same plan):

* ``--kills K``: SIGKILL a random process — connector, worker(s), sink and, unless
  ``--no-broker-kills``, a Kafka broker — and restart it 0.5–3 s later.
* ``--pauses N --pause-s S``: SIGSTOP a random process's whole process group (the same
  victims) for S seconds, then SIGCONT — a long GC pause, a frozen VM, CPU throttling. S
  must outlast the timeout after which the others give the victim up: the worker's group
  session (``WORKER_SESSION_TIMEOUT_S``), the sink's (``SINK_SESSION_TIMEOUT_MS``), the
  connector's transaction timeout, a cluster node's broker session (9 s, the controller then
  fences it and moves its leaderships). To keep runs short, a run with pauses lowers the
  worker's and the sink's session timeouts to 10 s (and the connector's transaction timeout
  too, where it is a setting; otherwise it is the 60 s of ``connectors/writer.py``), and S
  defaults to 3 × the lowest (30 s). Each pause in the report names its victim's timeout and
  whether S outlasted it.
* ``--cuts C --cut-s S``: cut a random pipeline process (connector, worker(s), sink — never
  a broker) off from every broker node for S seconds (default: as a pause), then reconnect
  it — a network partition between it and Kafka while WHMCS and Salesforce stay reachable:
  unlike a pause it goes on running, its timers fire and its calls go out. Each process
  reaches the brokers through a route of its own (``ops.netcut``, ``Pipeline(cuttable=)``);
  the cut freezes the route's connections without closing them. Cut victims follow the pause
  rules (``--pause-workers-only`` and ``--break-lease``: workers only).
* ``--workers 2``: a second worker in the consumer group (its own state directory), also a
  victim: each kill or pause of a worker moves its partitions to the other and back.
* ``--brokers 3``: a replicated cluster (``ops.kafka_cluster``: replication factor 3,
  ``min.insync.replicas`` 2, internal topics too). A kill or pause of the broker hits a role
  — the leader of a requests/outcomes partition or the worker's/sink's group coordinator —
  resolved through the admin API at that moment (``"fallback": true`` in the report when
  nobody held it then and another node was hit); at most one node is down at a time.
* ``--sf-faults``: Salesforce slow and flaky for the whole run — every REST call 20 ms
  late, 2 % answered 503, 2 % hanging 5 s before they are carried out (past the processes'
  3 s ``SF_TIMEOUT_S``: the caller gives up, the org still does it — a late sink write, a
  guard query answered to nobody, a token request retried), 2 % of the records of each
  write refused with ``UNABLE_TO_LOCK_ROW``. The report counts what the sandbox injected.
* WHMCS in runs with pauses: 60–70 ms (60 + 0–10) per ``AddOrder``/``AcceptOrder`` and
  ``WORKER_WHMCS_PARALLELISM`` 2 — a worker's WHMCS capacity (about 2 / 0.13 s = 15 Orders/s)
  below its share of the approvals, so its batches hold Orders queued behind the parallelism
  limit most of the time, and a pause catches some (``--whmcs-latency-ms``,
  ``--whmcs-parallelism`` change it).

Self-tests — the run must then fail: ``--break-guard`` (the worker's WHMCS lookup never
finds an order) and ``--break-lease`` (its ownership lease always says ok; at least two
workers, pauses only of workers, 3 pauses unless ``--pauses`` or ``--cuts`` is given): see ``bench/broken_worker.py``.
``--pause-workers-only`` draws the same plan with nothing broken: one seed compares the lease
on and off.

The plan's rules hold on the real timeline (``bench.chaos_faults``): a killed victim
restarts in the background while the plan goes on, and a fault whose victim is still out or
recovering waits for it (``late_s`` in the report; ``schedule_violations`` lists any fault
applied against the rules, expected none). From the command line, every pause and cut must
start inside 0.05–0.95 of the approval phase (``bench.chaos_plan``, rule 5): a plan where
they cannot is refused with the least ``--orders`` that fits them (exit 2).

When everything has settled it checks the invariants and writes ``bench/results/chaos.json``:
``approved``, ``whmcs_orders``, ``duplicates`` (Salesforce Orders with more than one WHMCS
order, counted per ``sfOrderId=`` marker in any status, cancelled included), ``missing``
(approved provisionable Orders without a final Salesforce state), ``compensations`` and
``fenced`` (the workers' ``compensation:`` / ``fenced:`` log lines), ``kills``, ``pauses``,
``brokers``, ``seed``, the ``plan``, ``whmcs_faults`` (the WHMCS sandbox's faults that
fired) and ``schedule_violations``. Exit status 1 when an invariant fails.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.chaos_faults import PIPELINE_PROCESSES, execute, schedule_violations, settle
from bench.chaos_plan import BROKER, WINDOW, Fault, PlanDoesNotFit, make_plan
from bench.chaos_report import (
    changelog_ends,
    count_lines,
    first_line,
    outcome_records,
)
from bench.harness import Pipeline

RESULTS = Path(__file__).resolve().parent / "results"
SESSION_TIMEOUT_S = 10.0   # worker and sink, in runs with pauses
BROKER_SESSION_S = 9.0     # KRaft broker.session.timeout.ms default
RECOVERY_AFTER_S = 60.0    # the workers' WORKER_RECOVERY_AFTER_S (ChaosRun.as_made)
WOULD_HAVE_FENCED = "lease off: would have fenced:"  # bench.broken_worker --break lease
WOULD_HAVE_REPAIRED = "repair off: would have looked at"  # --break repair
LOG_COUNTS = {"compensations": ("compensation:", None), "fenced": ("fenced:", WOULD_HAVE_FENCED),
              "lease_would_fence": (WOULD_HAVE_FENCED, None),
              "repairs": ("had another writer's records among ours", None),
              "restores_left_out": ("left out", None),  # the three below, together
              # late records after another worker's claim: a late writer's own it remembers,
              # or any writer's by their stamp (decision 0016)
              "restores_skipped_late": ("that landed after another worker", None),
              # ... of which the local store held the values (a restore in place): rebuilt next
              "restores_late_in_store": ("that the local store holds", None),
              "restores_held": ("past the store's", None),
              "restores_floor": ("at or below the offset the store holds", None),
              "stores_rebuilt": ("local store of partition", None),
              "repair_would_look": (WOULD_HAVE_REPAIRED, None)}


def pause_settings() -> tuple[dict[str, str], dict[str, float]]:
    """Env of a run with pauses (lowered timeouts) and each victim's relevant timeout (s)."""
    env = {"WORKER_SESSION_TIMEOUT_S": str(SESSION_TIMEOUT_S),
           "SINK_SESSION_TIMEOUT_MS": str(int(SESSION_TIMEOUT_S * 1000))}
    txn_env = _setting_env("ConnectorSettings", "TRANSACTION_TIMEOUT")
    if txn_env:  # a setting now: lower it like the others
        connector_s = SESSION_TIMEOUT_S
        env[txn_env] = str(int(SESSION_TIMEOUT_S * 1000) if txn_env.endswith("_MS")
                           else SESSION_TIMEOUT_S)
    else:
        connector_s = _connector_transaction_timeout_s()
    timeouts = {"worker": SESSION_TIMEOUT_S, "sink": SESSION_TIMEOUT_S,
                "connector": connector_s, BROKER: BROKER_SESSION_S}
    return env, timeouts


def _setting_env(section: str, fragment: str) -> str | None:
    """The env name of a setting of ``common.settings.<section>`` containing ``fragment``."""
    import common.settings as settings

    for f in dataclasses.fields(getattr(settings, section)):
        if fragment in f.metadata.get("env", ""):
            return str(f.metadata["env"])
    return None


def _connector_transaction_timeout_s() -> float:
    from common.settings import KafkaSettings
    from connectors.writer import producer_config

    return float(producer_config(KafkaSettings.load({}), "x")["transaction.timeout.ms"]) / 1000


@dataclasses.dataclass(frozen=True)
class ChaosRun:
    """One run's options: ``make chaos``'s command line (the e2e test builds a small one)."""

    orders: int = 5000
    kills: int = 20
    seed: int = 0
    rate: float = 25.0  # approvals per second
    broker_kills: bool = True
    bootstrap: str | None = None  # an existing broker; None: the run's own broker(s)
    settle_timeout: float = 900
    workers: int = 1
    brokers: int = 1
    pauses: int = 0
    pause_s: float | None = None
    pause_workers_only: bool = False
    cuts: int = 0
    cut_s: float | None = None
    whmcs_latency_ms: float | None = None
    whmcs_parallelism: int | None = None
    sf_faults: bool = False
    break_guard: bool = False
    break_lease: bool = False
    break_repair: bool = False
    # no plan unless every pause and cut starts inside the approvals (rule 5 of
    # bench.chaos_plan): --pauses or --cuts given on the command line; not compared
    refuse_late: bool = dataclasses.field(default=False, compare=False)

    def __post_init__(self) -> None:
        if self.cuts and self.bootstrap is not None:
            raise ValueError("cuts need the run's own broker(s): each process gets its own route")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ChaosRun:
        given = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
                 if hasattr(args, f.name)}
        given.update(pauses=args.pauses or 0, cuts=args.cuts or 0)
        return cls(**given, broker_kills=not args.no_broker_kills,
                   refuse_late=args.pauses is not None or args.cuts is not None)

    @property
    def broken(self) -> str | None:
        """What the run's workers have switched off (``bench.broken_worker --break``)."""
        return ("lease" if self.break_lease else "guard" if self.break_guard
                else "repair" if self.break_repair else None)

    def as_made(self) -> tuple[ChaosRun, dict[str, str], dict[str, float]]:
        """The run as it is made — ``--break-lease``'s two workers and three pauses, the
        defaults of a run with pauses or cuts — with the processes' env and each victim's
        timeout (:func:`pause_settings`)."""
        run = self
        if run.break_lease:
            run = dataclasses.replace(run, workers=max(run.workers, 2),
                                      pauses=run.pauses if run.pauses or run.cuts else 3)
        # the sweep acts on what is RECOVERY_AFTER_S old: the run's last quiet window
        # (chaos_faults.quiet_window) outlasts it and a sweep, so whatever a sweep would
        # still send — an unsent decision, a pending intent's outcome — is sent, and judged,
        # before the verdict (at the default 600 s, never inside a run)
        env = {"WHMCS_TIMEOUT_S": "2", "WORKER_RETRY_DEADLINE_S": "120",
               "WORKER_RECOVERY_AFTER_S": str(RECOVERY_AFTER_S)}
        if run.sf_faults:
            env["SF_TIMEOUT_S"] = str(SF_TIMEOUT_S)
        timeouts: dict[str, float] = {}
        if run.pauses or run.cuts:
            lowered, timeouts = pause_settings()
            env.update(lowered)
            pause_s = run.pause_s or 3 * min(timeouts["worker"], timeouts["sink"],
                                             timeouts["connector"])
            run = dataclasses.replace(
                run, pause_s=pause_s, cut_s=run.cut_s or pause_s,
                whmcs_parallelism=run.whmcs_parallelism or 2,
                whmcs_latency_ms=60 if run.whmcs_latency_ms is None else run.whmcs_latency_ms)
        if run.whmcs_parallelism:
            env["WORKER_WHMCS_PARALLELISM"] = str(run.whmcs_parallelism)
        return run, env, timeouts

    @property
    def extra_workers(self) -> list[str]:
        return [f"worker{i}" for i in range(2, self.workers + 1)]

    def plan(self) -> list[Fault]:
        """The faults, drawn from the seed (:func:`bench.chaos_plan.make_plan`), pauses and
        cuts inside the approval phase where they fit (rule 5). With ``refuse_late``,
        :class:`~bench.chaos_plan.PlanDoesNotFit` when they do not all fit, naming the least
        ``--orders`` that fits them (:meth:`minimum_orders`)."""
        try:
            return self._plan(self.orders)
        except PlanDoesNotFit as exc:
            duration = self.orders / self.rate
            least = self.minimum_orders()
            raise PlanDoesNotFit(exc.late, exc.duration_s, (
                f"{self.pauses} pause(s) and {self.cuts} cut(s) do not all fit inside "
                f"{WINDOW[0]:g}-{WINDOW[1]:g} of the approval phase ({self.orders} Orders at "
                f"{self.rate:g}/s: {duration:.0f} s; seed {self.seed}): {len(exc.late)} would "
                f"start after {WINDOW[1] * duration:.0f} s; "
                + (f"the least --orders that fits them is {least}" if least is not None
                   else "no --orders up to 100 times as many fits them"))) from None

    def minimum_orders(self) -> int | None:
        """The least ``--orders`` above :attr:`orders` whose plan (this seed) starts every
        pause and cut inside the approval phase."""
        for orders in range(self.orders + 1, 100 * self.orders + 1):
            try:
                self._plan(orders, refuse=True)
            except PlanDoesNotFit:
                continue
            return orders
        return None

    def late_faults(self, plan: list[Fault]) -> list[Fault]:
        """The pauses and cuts of ``plan`` that start past 0.95 of the approval phase."""
        return [f for f in plan
                if f.action != "kill" and f.at_s > WINDOW[1] * self.orders / self.rate]

    def _plan(self, orders: int, refuse: bool | None = None) -> list[Fault]:
        processes = (*PIPELINE_PROCESSES, *self.extra_workers)
        victims = [*processes, *([BROKER] if self.broker_faults else [])]
        workers_only = self.break_lease or self.pause_workers_only
        return make_plan(self.seed, duration_s=orders / self.rate, kills=self.kills,
                         pauses=self.pauses, pause_s=self.pause_s or 0.0, kill_victims=victims,
                         pause_victims=[p for p in victims if p.startswith("worker")]
                         if workers_only else victims,
                         cluster=self.brokers > 1, partitions=3, cuts=self.cuts,
                         cut_s=self.cut_s or 0.0,
                         cut_victims=[p for p in processes if p.startswith("worker")]
                         if workers_only else list(processes),
                         within=True,
                         refuse=self.refuse_late if refuse is None else refuse)

    @property
    def broker_faults(self) -> bool:
        return self.broker_kills and self.bootstrap is None

    def result_file(self) -> Path:
        """Where a run writes its result unless ``--out``: never over another kind of run's."""
        if self.broken:
            return RESULTS / f"chaos-broken-{self.broken}.json"
        parts = [f"{self.workers}-workers"] if self.workers > 1 else []
        parts += [f"{self.brokers}-brokers"] if self.brokers > 1 else []
        parts += ["cuts"] if self.cuts else []
        parts += ["sf-faults"] if self.sf_faults else []
        return RESULTS / ("-".join(["chaos", *parts]) + ".json")


def run_chaos(directory: Path, given: ChaosRun, log: Any = print) -> dict[str, Any]:
    run, env, timeouts = given.as_made()
    log(f"chaos: {run.orders} Orders at {run.rate}/s, {run.kills} kills, {run.pauses} pauses, "
        f"{run.cuts} cuts, seed {run.seed}, {run.workers} worker(s), {run.brokers} broker(s)"
        + (" — lease OFF" if run.break_lease else "")
        + (", Salesforce slow and flaky" if run.sf_faults else ""))
    extra_workers = run.extra_workers
    processes = (*PIPELINE_PROCESSES, *extra_workers)
    plan = run.plan()
    if late := run.late_faults(plan):  # --break-lease's own pauses: said, not refused
        least = run.minimum_orders()
        log(f"chaos: warning: {len(late)} of the pauses and cuts start after "
            f"{WINDOW[1] * run.orders / run.rate:.0f} s, with few or no Orders left to "
            f"approve" + (f" (--orders {least} fits them)" if least else ""))
    commands = {}
    if run.broken:  # self-test: the invariants must catch the breakage
        commands["worker"] = ["-m", "bench.broken_worker", "--break", run.broken, "worker"]
    with Pipeline(directory, bootstrap=run.bootstrap, accounts=200, orders=run.orders,
                  broken_every=50, partitions=3, env=env, brokers=run.brokers,
                  commands=commands, cuttable=list(processes) if run.cuts else None) as p:
        for name in extra_workers:  # the group shares the partitions among them
            p.add_worker(name)
        _whmcs_faults(p, run.seed, run.whmcs_latency_ms)
        if run.sf_faults:  # seeded: --seed repeats the Salesforce faults too
            p.sf.set_faults(seed=run.seed, **SF_FAULTS)
        approved: list[str] = []
        errors: list[str] = []
        approving_s = [0.0]
        approving = threading.Thread(target=_approve, daemon=True,
                                     args=(p, run.orders, run.rate, approved, errors,
                                           approving_s))
        watched = (*processes, *p.broker_names)  # deaths of their own: revived, reported
        started = time.monotonic()
        approving.start()
        applied, restarts = execute(p, plan, watched, timeouts, started, log,
                                    approvals=lambda: (approving.is_alive(), list(approved)))
        approving.join()
        log(f"  approved {len(approved)} Orders in {approving_s[0]:.0f}s; faults done at "
            f"{time.monotonic() - started:.0f}s; waiting for every Order to settle")
        more, settled = settle(p, approved, watched, started, run.settle_timeout)
        restarts += more
        workers_logs = ("worker", *extra_workers)
        report = p.invariants(approved)
        if run.sf_faults:
            calls = p.sf.counters()["calls"]
            report["sf_faults"] = {**SF_FAULTS, "timeout_s": SF_TIMEOUT_S, "injected": {
                k: calls.get(f"injected_{k}", 0) for k in ("hang", "503", "UNABLE_TO_LOCK_ROW")}}
        report.update(
            seed=run.seed, rate=run.rate, broker_kills=run.broker_faults, workers=run.workers,
            brokers=run.brokers if run.bootstrap is None else None,
            break_lease=run.break_lease, break_guard=run.break_guard,
            break_repair=run.break_repair, env=env,
            **{key: count_lines(p, workers_logs, needle, but)
               for key, (needle, but) in LOG_COUNTS.items()},
            worker_variant=first_line(p, "worker", "bench.broken_worker:"),
            connector_fenced=count_lines(p, ("connector",), "fenced:"),
            # chaos loses no event: an Order the connector's reconciliation had to request
            # again is one the pipeline lost (no request written, or committed past without
            # an outcome), repaired behind the check's back
            rerequested=count_lines(p, ("connector",), "stranded Order re-requested"),
            commit_gate_holds=count_lines(p, workers_logs, "commit gate: faust would commit"),
            settled=settled,
            duplicate_detail={oid: [(o["id"], o["status"]) for o in p.whmcs.orders_for(oid)]
                              for oid in report["duplicate_orders"]},
            errors=errors, duration_s=round(time.monotonic() - started, 1))
        report.update(fault_report(p, plan, applied, restarts))
        report.update(outcome_records(p))
        report.update(changelog_ends(p))
        report["faults_ok"] = faults_ok(report)
        report["ok"] = verdict(report, run.orders)
        return report


def verdict(report: dict[str, Any], orders: int) -> bool:
    """The run kept every guarantee: no duplicate WHMCS order, no Order missing or
    contradicted, Salesforce and WHMCS agreeing (Orders and Opportunities), no WHMCS order
    for an Order that failed, nothing lost and repaired by the connector's reconciliation,
    every Order settled, and the faults as planned (:func:`faults_ok`). The changelogs'
    ends are reported, not judged (a late writer's record a restore leaves out by its
    stamp counts there too: README, *Late table writes*)."""
    return (report["duplicates"] == 0 and report["missing"] == 0
            and report["outcomes_contradicting"] == 0
            and report["disagreeing"] == 0 and report["not_provisioned"] == 0
            and report["broken_not_failed"] == 0
            and report.get("failed_with_whmcs_order", 0) == 0
            and report.get("opportunities_behind", 0) == 0
            and report.get("rerequested", 0) == 0 and report["settled"]
            and report["approved"] == orders and not report["errors"]
            and report["faults_ok"])


def faults_ok(report: dict[str, Any]) -> bool:
    """The faults happened as the report says, and nothing else did: no process died on its
    own (``unplanned``), the plan's rules held on the real timeline, every fault was applied
    to its victim (none skipped, none on a fallback node, every restart made), every pause
    and cut outlasted the victim's timeout, and the dependency faults that test the
    at-most-once path fired (:func:`dependency_faults_fired`). An ``ok`` data verdict over faults that did not
    land, or beside a crash the harness quietly restarted, proves less than it says."""
    faults = [*report.get("kill_plan", []), *report.get("pauses", []), *report.get("cuts", [])]
    return (dependency_faults_fired(report)
            and report.get("unplanned_restarts", 0) == 0
            and not report.get("schedule_violations")
            and not any("skipped" in f or f.get("fallback") or f.get("restart_error")
                        for f in faults)
            and all(f.get("past_timeout", True) for f in faults if f["action"] != "kill"))


#: From this many Orders a run must have drawn the dependency faults (at a 1 % rate, none in
#: 1,000 calls is a chance of 4 in 100,000); a smaller run may draw none, and is not failed
#: for it — it proves less about the at-most-once path, as its report shows.
FAULTS_EXPECTED_FROM = 1000
#: The same for a Salesforce hang (``--sf-faults``, 2 %): its REST calls are batched, about
#: 225–385 per 1,000 Orders in the recorded runs, so none in a 1,000-Order run is a chance
#: of 1 in 100; from 5,000 Orders (1,100 calls or more) one in 10^9.
SF_FAULTS_EXPECTED_FROM = 5000


def dependency_faults_fired(report: dict[str, Any]) -> bool:
    """The dependency faults that test the at-most-once path fired: an ``AddOrder`` hung
    after its commit and an ``AcceptOrder`` dropped after it — required of a run of
    :data:`FAULTS_EXPECTED_FROM` Orders or more (a large run that drew none: the faults were
    not set, or a spec was cleared) —, and with ``--sf-faults`` a Salesforce call hung, from
    :data:`SF_FAULTS_EXPECTED_FROM` Orders."""
    approved = report.get("approved", 0)
    if approved < FAULTS_EXPECTED_FROM:
        return True
    kinds = (report.get("whmcs_faults") or {}).get("fired_kinds", {})

    def fired(action: str, kind: str) -> int:  # its specs: unscoped, and one per match
        return sum(k.get(kind, 0) for key, k in kinds.items()
                   if key == action or key.startswith(action + "|"))
    injected = (report.get("sf_faults") or {}).get("injected", {"hang": 1})
    return (fired("addorder", "hang") > 0 and fired("acceptorder", "drop") > 0
            and (injected.get("hang", 0) > 0 or approved < SF_FAULTS_EXPECTED_FROM))


def fault_report(p: Pipeline, plan: list[Fault], applied: list[dict[str, Any]],
                 restarts: list[dict[str, Any]]) -> dict[str, Any]:
    """The faults as drawn and as applied, the deaths no fault caused, the plan's rules
    checked on the real timeline, and the WHMCS sandbox's faults that fired."""
    return {
        "kill_plan": [f for f in applied if f["action"] == "kill"],
        "pauses": [f for f in applied if f["action"] == "pause"],
        "pause_count": sum(f["action"] == "pause" and "skipped" not in f for f in applied),
        "pauses_skipped": sum(f["action"] == "pause" and "skipped" in f for f in applied),
        "cuts": [f for f in applied if f["action"] == "cut"],
        "cut_count": sum(f["action"] == "cut" for f in applied),
        "plan": [f.as_dict() for f in plan],
        "unplanned_restarts": len(restarts), "unplanned": restarts,
        "schedule_violations": schedule_violations(applied, restarts),
        "whmcs_faults": _fired(p.whmcs.faults()),
    }


def _fired(faults: dict[str, Any]) -> dict[str, Any]:
    """The WHMCS sandbox's faults that reached a call: ``fired`` per spec (latency counts, so
    with latency on it is about every call of its action) and ``fired_kinds``, the same split
    into latency, hangs, drops and errors — the hangs and drops are the faults that test the
    at-most-once path."""
    return {"fired": faults.get("fired", {}), "fired_kinds": faults.get("fired_kinds", {})}


SF_TIMEOUT_S = 3.0
SF_FAULTS = {"rest_latency_ms": 20, "rest_503_rate": 0.02, "rest_hang_rate": 0.02,
             "rest_hang_s": 5.0, "lock_row_rate": 0.02}


def _whmcs_faults(p: Pipeline, seed: int, latency_ms: float | None) -> None:
    """Commit-then-hang on both writes; latency as in kill-only runs (``AddOrder`` 15 + 0–15
    ms, ``AcceptOrder`` 10 + 0–10 ms), or ``latency_ms`` + 0–10 ms."""
    add, accept = ((15, 15), (10, 10)) if latency_ms is None else \
        ((latency_ms, 10), (latency_ms, 10))
    p.whmcs.set_fault_seed(seed)
    p.whmcs.set_faults("AddOrder", latency_ms=add[0], jitter_ms=add[1], hang_rate=0.01,
                       hang_s=4)
    p.whmcs.set_faults("AcceptOrder", latency_ms=accept[0], jitter_ms=accept[1],
                       hang_rate=0.01, hang_s=4, hang_mode="drop")


def _approve(p: Pipeline, orders: int, rate: float, approved: list[str],
             errors: list[str], took: list[float]) -> None:
    chunk = max(1, int(rate / 4))
    first = time.monotonic()
    try:
        while len(approved) < orders:
            started = time.monotonic()
            approved.extend(p.sf.approve(min(chunk, orders - len(approved))))
            time.sleep(max(0.0, chunk / rate - (time.monotonic() - started)))
    except Exception as exc:  # noqa: BLE001 - reported in the result
        errors.append(f"approving: {exc!r}")
    took[0] = time.monotonic() - first


SUMMARY = ("approved", "whmcs_orders", "duplicates", "missing", "opportunities_behind",
           "rerequested", "kills", "pause_count", "repairs",
           "cut_count",
           "brokers", "compensations", "fenced", "lease_would_fence", "seed", "workers",
           "commit_gate_holds", "outcome_records", "outcomes_resent", "outcomes_contradicting",
           "changelog_pending_intents", "changelog_unsent_decisions", "repair_would_look",
           "restores_left_out", "restores_skipped_late", "restores_late_in_store",
           "restores_held", "restores_floor",
           "stores_rebuilt",
           "unplanned_restarts", "schedule_violations", "whmcs_faults", "faults_ok", "ok")


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="make chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--orders", type=int, default=5000)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--pauses", type=int, default=None,
                        help="SIGSTOP a random process this many times (see --pause-s; "
                             "default 0, --break-lease 3); given, the run is refused (exit 2) "
                             "unless every pause and cut starts inside 0.05-0.95 of the "
                             "approvals, naming the least --orders that fits them")
    parser.add_argument("--pause-s", type=float, default=None,
                        help="how long each pause lasts (default: 3 x the lowest relevant "
                             "timeout, which runs with pauses lower to 10 s: 30 s)")
    parser.add_argument("--sf-faults", action="store_true",
                        help="Salesforce slow and flaky for the whole run (latency, 503s, "
                             "calls hanging past the client timeout, row locks)")
    parser.add_argument("--cuts", type=int, default=None,
                        help="cut a random pipeline process off from the brokers this many "
                             "times (see --cut-s; default 0); refused as --pauses")
    parser.add_argument("--cut-s", type=float, default=None,
                        help="how long each cut lasts (default: as a pause, 30 s)")
    parser.add_argument("--seed", type=int, default=int(time.time()) % 100_000)
    parser.add_argument("--rate", type=float, default=25.0, help="approvals per second")
    parser.add_argument("--no-broker-kills", action="store_true",
                        help="neither kill nor pause a broker")
    parser.add_argument("--workers", type=int, default=1,
                        help="worker processes sharing the partitions (each a victim)")
    parser.add_argument("--brokers", type=int, default=1,
                        help="Kafka nodes: 3 runs a replicated cluster (RF 3, min ISR 2)")
    parser.add_argument("--whmcs-latency-ms", type=float, default=None,
                        help="WHMCS AddOrder/AcceptOrder latency (default 60 with pauses)")
    parser.add_argument("--whmcs-parallelism", type=int, default=None,
                        help="WORKER_WHMCS_PARALLELISM (default 2 with pauses)")
    parser.add_argument("--pause-workers-only", action="store_true",
                        help="pauses hit only workers (the plan --break-lease draws: the same "
                             "seed then gives the lease-on run the lease-off run's plan)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--settle-timeout", type=float, default=900,
                        help="seconds to wait after the faults for every Order to settle")
    parser.add_argument("--keep", type=Path, default=None,
                        help="run in this directory and keep it (every process's log)")
    parser.add_argument("--break-guard", action="store_true",
                        help="self-test: run a worker whose WHMCS lookup never finds an order "
                             "(bench/broken_worker.py); the run must then fail")
    parser.add_argument("--break-lease", action="store_true",
                        help="self-test: run workers whose ownership lease always says ok, "
                             "pausing (or cutting) only workers (at least 2); the run must "
                             "then fail")
    parser.add_argument("--break-repair", action="store_true",
                        help="self-test: run workers that leave another writer's late "
                             "changelog records as they land, and restore their own late "
                             "records (use with --cuts or --pauses and "
                             "--pause-workers-only); the changelogs may then end with them")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    run = ChaosRun.from_args(args)
    out = args.out or run.result_file()
    try:
        run.as_made()[0].plan()
    except PlanDoesNotFit as exc:
        print(f"make chaos: {exc}", file=sys.stderr)
        return 2
    with contextlib.ExitStack() as stack:
        tmp = args.keep or stack.enter_context(tempfile.TemporaryDirectory(prefix="sfprov-chaos-"))
        report = run_chaos(Path(tmp), run)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report.get(k) for k in SUMMARY}))
    print(f"wrote {out}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
