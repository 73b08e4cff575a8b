"""The whole pipeline as production runs it, for end-to-end tests, ``make chaos``, ``make bench``.

::

    with Pipeline(tmp_path, accounts=50, orders=300) as p:   # broker, sandboxes, 3 processes
        ids = p.sf.approve(100)
        p.wait_settled(ids, timeout=120)                        # every Order in a final state
        report = p.invariants(ids)                              # duplicates, missing, ...
        p.kill("worker"); p.start("worker")                     # SIGKILL and restart
        p.pause("worker", 30)                                   # SIGSTOP, SIGCONT 30 s later

Everything runs as separate OS processes: a real Kafka broker (``ops.kafka_local``, or an
existing one via ``bootstrap=``), the Salesforce and WHMCS sandboxes (their harnesses), and
``python -m connectors run``, ``python -m streams worker``, ``python -m sinks run``, each
with its own log file under ``<dir>/logs``. Topic and group names carry a unique prefix so
several pipelines can share one broker.

``secure=True`` (own broker only) runs the broker with a SASL_SSL listener, SCRAM users and
ACLs (:mod:`ops.kafka_secure`, :mod:`ops.acls`): the harness creates the topics and ACLs as
the admin, and each process connects as its own principal with least privilege.
``brokers=3`` runs its own replicated cluster instead (``ops.kafka_cluster``): topics with
replication factor 3 and ``min.insync.replicas`` 2, the nodes named ``kafka1``..``kafka3``
for :meth:`Pipeline.kill`, :meth:`Pipeline.pause` and :meth:`Pipeline.restart` (a single
broker is ``kafka``).

``cuttable=["worker", "worker2", ...]`` (own broker or cluster, plaintext) gives each named
process a route of its own to the brokers — a listener per process on every node, advertising
a forwarder of :mod:`ops.netcut` — so :meth:`Pipeline.cut` can cut that one process off from
Kafka for a while, as a network partition would, while the sandboxes and the rest stay
reachable. Without it the processes connect to the brokers directly.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from common.avro import AvroSerde
from common.kafka import admin_client, ensure_topics
from common.settings import ConnectorSettings, KafkaSettings, SinkSettings, WorkerSettings
from common.whmcs import has_marker, marker
from ops.kafka_cluster import LocalCluster
from ops.kafka_local import LocalBroker, free_port
from ops.kafka_secure import ADMIN, PROCESS_USERS, BrokerSecurity
from ops.netcut import CutRoutes

ROOT = Path(__file__).resolve().parent.parent
PROCESSES = {
    "connector": ["-m", "connectors", "run"],
    "worker": ["-m", "streams", "worker"],
    "sink": ["-m", "sinks", "run"],
}
FINAL_STATES = ("Provisioned", "Failed")


class Pipeline:
    def __init__(self, directory: Path, *, bootstrap: str | None = None, accounts: int = 50,
                 orders: int = 200, broken_every: int = 50, partitions: int = 3,
                 env: dict[str, str] | None = None, sf_options: dict[str, Any] | None = None,
                 whmcs_options: dict[str, Any] | None = None, secure: bool = False,
                 brokers: int = 1, commands: dict[str, list[str]] | None = None,
                 cuttable: list[str] | None = None) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "logs").mkdir(exist_ok=True)
        self.own_broker = bootstrap is None
        if secure and not self.own_broker:
            raise ValueError("secure=True needs the pipeline's own broker")
        if cuttable and (secure or not self.own_broker):
            raise ValueError("cuttable= needs the pipeline's own plaintext broker(s)")
        self.routes = CutRoutes(cuttable or [], brokers, free_port)
        self.security: BrokerSecurity | None = (
            BrokerSecurity.for_broker_home(self.dir / "kafka") if secure else None)
        self.broker: LocalBroker | None = None
        self.brokers = brokers
        self.cluster: LocalCluster | None = None
        self.bootstrap = bootstrap or ""
        self.accounts, self.orders, self.broken_every = accounts, orders, broken_every
        self.partitions = partitions
        self.prefix = f"p{uuid.uuid4().hex[:6]}."
        self.extra_env = env or {}
        self.sf_options = sf_options or {}
        self.whmcs_options = whmcs_options or {}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        # chaos's self-tests swap in a broken worker (from the first start on)
        self.commands = {**PROCESSES, **(commands or {})}
        self.process_env: dict[str, dict[str, str]] = {}  # per-process overrides
        self.ports: dict[str, int] = {}
        self.kills: list[tuple[float, str]] = []
        self.pauses: list[tuple[float, str, float | None]] = []  # (when, who, for how long)
        self._paused: dict[str, tuple[int, threading.Timer | None]] = {}  # name → pgid, timer
        self._pause_lock = threading.Lock()
        self._stack = contextlib.ExitStack()
        self.sf: Any = None
        self.whmcs: Any = None
        self.seeded: dict[str, Any] = {}

    # -- lifecycle ------------------------------------------------------------------------

    def __enter__(self) -> Pipeline:
        # A SIGTERM (e.g. `timeout`) must unwind through __exit__: the children run in their
        # own sessions and would otherwise outlive the harness.
        if threading.current_thread() is threading.main_thread() and \
                signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        try:
            self.start_all()
        except BaseException:
            self.stop_all()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()

    def start_all(self) -> None:
        from sandbox.salesforce.harness import running_sandbox
        from sandbox.whmcs.harness import whmcs_sandbox

        listeners = [self.routes.listeners(i) for i in range(self.brokers)]
        self.routes.start()
        if self.own_broker and self.brokers > 1:
            self.cluster = LocalCluster(self.dir / "kafka", nodes=self.brokers,
                                        extra_listeners=listeners)
            self.cluster.start(timeout=180)
            self.bootstrap = self.cluster.bootstrap
        elif self.own_broker:
            self.broker = LocalBroker(self.dir / "kafka", port=free_port(),
                                      controller_port=free_port(), security=self.security,
                                      extra_listeners=listeners[0])
            self.broker.start(timeout=120)
            self.bootstrap = self.broker.bootstrap
        # the harness itself (topics, ACLs, reading topics) is the admin
        admin_env = self.security.env(ADMIN) if self.security else {}
        self.kafka = KafkaSettings.load(admin_env, bootstrap_servers=self.bootstrap,
                                        topic_prefix=self.prefix, partitions=self.partitions,
                                        **self._replication())
        ensure_topics(self.kafka)
        if self.security is not None:
            self.apply_acls()
        self.whmcs = self._stack.enter_context(
            whmcs_sandbox(self.dir / "whmcs", accounts=max(self.accounts, 10),
                          **self.whmcs_options))
        self.sf = self._stack.enter_context(running_sandbox(self.dir / "sf", **self.sf_options))
        self.seeded = self.sf.seed(accounts=self.accounts, orders=self.orders,
                                   broken_every=self.broken_every)
        for name in PROCESSES:
            self.start(name)
        for name in PROCESSES:
            self.wait_healthy(name)

    def client_config(self, **extra: Any) -> dict[str, Any]:
        """A confluent-kafka configuration for the harness's own clients (the admin's when
        the broker is secured)."""
        from common.connection import kafka_config

        return kafka_config(self.kafka, **extra)

    def apply_acls(self) -> int:
        """Each process's least-privilege ACLs for this pipeline's names (ops.acls)."""
        from ops.acls import acls, apply

        env = {**self.extra_env, "KAFKA_TOPIC_PREFIX": self.prefix}
        rules = acls(self.kafka, worker=WorkerSettings.load(env), sink=SinkSettings.load(env),
                     connector=ConnectorSettings.load(env))
        return apply(admin_client(self.kafka), rules)

    def stop_all(self) -> None:
        for name in list(self._paused):
            self.resume(name)  # a stopped process would not even see its SIGTERM
        for name in list(self.procs):
            self.stop(name)
        self._stack.close()
        if self.broker is not None:
            self.broker.stop()
        if self.cluster is not None:
            self.cluster.stop()
        self.routes.close()

    def _replication(self) -> dict[str, int]:
        """Replication of the pipeline's topics: the cluster's, or the settings' defaults."""
        if self.cluster is None:
            return {}
        return {"replication_factor": self.cluster.replication_factor,
                "min_insync_replicas": self.cluster.min_insync_replicas}

    # -- processes ------------------------------------------------------------------------

    def env(self, name: str) -> dict[str, str]:
        port = self.ports.setdefault(name, free_port())
        kind = name.rstrip("0123456789")  # worker2 is another worker
        bootstrap = self.bootstrap
        if name in self.routes:  # its own route to every node
            bootstrap = self.routes.bootstrap(name)
        env = {**os.environ, **self.sf.env(), **self.whmcs.env(),
               "PYTHONPATH": str(ROOT), "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
               "KAFKA_TOPIC_PREFIX": self.prefix, "KAFKA_PARTITIONS": str(self.partitions),
               "SF_EVENTS_REPLAY": "EARLIEST", "SFPROV_STATE_DIR": str(self.dir / "state"),
               "LOG_LEVEL": "INFO", f"{kind.upper()}_HTTP_PORT": str(port),
               "SFPROV_ENV_FILE": os.devnull}
        if self.security is not None and kind in PROCESS_USERS:
            env.update(self.security.env(PROCESS_USERS[kind]))
        env.update({f"KAFKA_{k.upper()}": str(v) for k, v in self._replication().items()})
        env.update(self.extra_env)
        env.update(self.process_env.get(name, {}))
        return env

    def add_worker(self, name: str) -> None:
        """Start one more worker in the same consumer group, with its own state directory."""
        self.commands[name] = self.commands["worker"]
        self.process_env[name] = {"SFPROV_STATE_DIR": str(self.dir / f"state-{name}")}
        self.start(name)
        self.wait_healthy(name)

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = open(self.dir / "logs" / f"{name}.log", "ab")  # noqa: SIM115 - owned by child
        log.write(f"\n=== start {time.strftime('%H:%M:%S')}\n".encode())
        log.flush()
        proc = subprocess.Popen([sys.executable, *self.commands[name], *args], cwd=ROOT,
                                env=self.env(name), stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        self.procs[name] = proc
        return proc

    def wait_healthy(self, name: str, timeout: float = 90.0) -> None:
        import urllib.request

        def healthy(url: str) -> bool:
            with contextlib.suppress(Exception), \
                    urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 - local
                return bool(resp.status == 200)
            return False

        self._poll_probe(name, "/healthz", healthy, 0.3, timeout, "not healthy")

    def wait_listening(self, name: str, timeout: float = 90.0) -> None:
        """Until ``name``'s probe server answers at all — ``/readyz`` 200 or 503 (``starting``):
        the instant its start-up begins talking to Kafka, where :meth:`wait_healthy` returns
        only once that start-up is over (the worker's first rebalance, its tables restored)."""
        import urllib.error
        import urllib.request

        def answers(url: str) -> bool:
            try:
                with urllib.request.urlopen(url, timeout=2):  # noqa: S310 - local
                    return True
            except urllib.error.HTTPError:
                return True  # answered: 503 while starting
            except OSError:
                return False

        self._poll_probe(name, "/readyz", answers, 0.05, timeout, "not listening")

    def _poll_probe(self, name: str, path: str, done: Callable[[str], bool], every_s: float,
                    timeout: float, failed: str) -> None:
        """Ask ``name``'s probe server for ``path`` every ``every_s`` until ``done`` says yes,
        failing (``"{name} {failed} after …"``) once the process exits or ``timeout`` passes."""
        url = f"http://127.0.0.1:{self.ports[name]}{path}"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc = self.procs[name]
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}; see {self.log(name)}")
            if done(url):
                return
            time.sleep(every_s)
        raise RuntimeError(f"{name} {failed} after {timeout}s; see {self.log(name)}")

    def log(self, name: str) -> Path:
        return self.dir / "logs" / f"{name}.log"

    @property
    def broker_names(self) -> list[str]:
        """The own broker's name (``kafka``) or the cluster's nodes (``kafka1``..)."""
        if self.cluster is not None:
            return [f"kafka{n.node_id}" for n in self.cluster.nodes]
        return ["kafka"] if self.broker is not None else []

    def _broker(self, name: str) -> LocalBroker:
        if self.cluster is not None and name[5:].isdigit():
            return self.cluster.node(int(name[5:]))
        assert name == "kafka" and self.broker is not None, f"no own broker called {name}"
        return self.broker

    def pid(self, name: str) -> int | None:
        """The running process (and process group: each runs in its own session) of ``name``."""
        if name.startswith("kafka"):
            return self._broker(name).running_pid()
        proc = self.procs.get(name)
        return proc.pid if proc is not None and proc.poll() is None else None

    def kill(self, name: str) -> bool:
        """SIGKILL, as a crash would (also ends a pause of ``name``). False when ``name`` was
        not running — it had exited on its own (its code: ``procs[name].returncode``): no
        signal sent, no kill counted in :attr:`kills`."""
        self._forget_pause(name)
        if name.startswith("kafka"):
            broker = self._broker(name)
            if broker.running_pid() is None:
                return False
            broker.kill()
            self.kills.append((time.time(), name))
            return True
        proc = self.procs.get(name)
        if proc is None or proc.poll() is not None:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        self.kills.append((time.time(), name))
        return True

    def restart(self, name: str) -> None:
        if self.cluster is not None and name.startswith("kafka"):
            self.cluster.restart_node(int(name[5:]), timeout=120)
        elif name == "kafka":
            self._broker(name).start(timeout=120)
        else:
            self.start(name)

    def pause(self, name: str, seconds: float | None = None) -> None:
        """SIGSTOP ``name``'s whole process group — a long GC pause, a frozen VM, CPU
        throttling — and SIGCONT it after ``seconds`` (None: at :meth:`resume`). Returns at
        once; a kill of ``name`` ends the pause, :meth:`stop_all` ends them all."""
        pid = self.pid(name)
        if pid is None:
            raise RuntimeError(f"cannot pause {name}: not running")
        os.killpg(pid, signal.SIGSTOP)
        timer = None
        if seconds is not None:
            timer = threading.Timer(seconds, self._continue, (name, pid))
            timer.daemon = True
        with self._pause_lock:
            self._paused[name] = (pid, timer)
        self.pauses.append((time.time(), name, seconds))
        if timer is not None:
            timer.start()

    def resume(self, name: str) -> None:
        """SIGCONT a paused ``name`` now (nothing if it is not paused)."""
        entry = self._forget_pause(name)
        if entry is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(entry[0], signal.SIGCONT)

    def paused(self) -> list[str]:
        with self._pause_lock:
            return list(self._paused)

    def _continue(self, name: str, pid: int) -> None:
        with self._pause_lock:
            if self._paused.get(name, (None, None))[0] != pid:
                return  # resumed or killed meanwhile
            del self._paused[name]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGCONT)

    def _forget_pause(self, name: str) -> tuple[int, threading.Timer | None] | None:
        with self._pause_lock:
            entry = self._paused.pop(name, None)
        if entry is not None and entry[1] is not None:
            entry[1].cancel()
        return entry

    # -- cuts from the brokers (ops.netcut.CutRoutes) -------------------------------------

    def cut(self, name: str, seconds: float | None = None) -> None:
        """Cut ``name`` off from every broker node (it goes on running; the sandboxes stay
        reachable) and reconnect it after ``seconds`` (None: at :meth:`heal`). Returns at
        once; a kill does not end a cut — the restarted process starts cut off."""
        self.routes.cut(name, seconds)

    def heal(self, name: str) -> None:
        self.routes.heal(name)

    def cut_off(self) -> list[str]:
        return self.routes.cut_off()

    def stop(self, name: str, timeout: float = 30.0) -> int | None:
        self.resume(name)
        proc = self.procs.pop(name, None)
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        return proc.returncode

    # -- observations ---------------------------------------------------------------------

    def provisionable(self, order_ids: list[str]) -> list[str]:
        """Of ``order_ids``, those the seed did not break on purpose."""
        broken = {o["order_id"] for o in self.seeded.get("orders", []) if o.get("broken")}
        return [oid for oid in order_ids if oid not in broken]

    def sf_orders(self, order_ids: list[str]) -> dict[str, dict[str, Any]]:
        return self.sf_orders_fields(order_ids, "Activation_Status__c, Activation_Error__c, "
                                                "WHMCS_Order_Id__c, OpportunityId")

    def sf_orders_fields(self, order_ids: list[str], fields: str) -> dict[str, dict[str, Any]]:
        """Orders by id with the given fields, read through the sandbox (200 ids a query)."""
        return self.sf_records("Order", order_ids, fields)

    def sf_records(self, sobject: str, ids: list[str], fields: str
                   ) -> dict[str, dict[str, Any]]:
        """Records of ``sobject`` by id with the given fields, read through the sandbox (200
        ids a query)."""
        out: dict[str, dict[str, Any]] = {}
        for i in range(0, len(ids), 200):
            chunk = ids[i:i + 200]
            soql = (f"SELECT Id, {fields} FROM {sobject} WHERE Id IN ('" + "','".join(chunk)
                    + "')")
            for row in self.sf.query(soql).get("records", []):
                out[row["Id"]] = row
        return out

    def wait_settled(self, order_ids: list[str], timeout: float = 180.0,
                     poll: float = 1.0) -> dict[str, dict[str, Any]]:
        """Wait until every Order is Provisioned or Failed in Salesforce (the sink wrote it);
        the rows of the last read, which comes at the deadline at the latest (with no time
        left, one read: never an empty answer that would count every Order as unsettled).
        It returns at the first poll that sees them all: time it by the Orders' own
        timestamps (:func:`settle_span_s`), not by its return."""
        deadline = time.monotonic() + timeout
        while True:
            rows = self.sf_orders(order_ids)
            if all(r.get("Activation_Status__c") in FINAL_STATES for r in rows.values()) \
                    and len(rows) == len(order_ids):
                return rows
            left = deadline - time.monotonic()
            if left <= 0:
                return rows
            time.sleep(min(poll, left))

    def outcomes(self) -> list[dict[str, Any]]:
        from ops.kafkaview import scan

        return [r.value for r in scan(self.kafka, self.kafka.outcomes, "provisioning_outcome",
                                      complete=True)]

    def records(self, topic: str, schema: str | None = None) -> list[Any]:
        from ops.kafkaview import scan

        return list(scan(self.kafka, topic, schema, complete=True))

    def invariants(self, approved: list[str]) -> dict[str, Any]:
        """The figures make chaos checks: no duplicate WHMCS order, nobody left behind."""
        counters = self.whmcs.counters()
        rows = self.sf_orders(approved)
        provisionable = self.provisionable(approved)
        missing = [oid for oid in provisionable
                   if rows.get(oid, {}).get("Activation_Status__c") not in FINAL_STATES]
        per_marker = {**(counters.get("duplicates") or {}),
                      **(counters.get("orders_by_marker") or {})}
        # this run's Orders only: the sandbox counts every Order it has seen (side_by_side
        # runs several times on one sandbox, the earlier runs' duplicates are not this one's)
        whmcs_orders = marker_counts(per_marker, approved)
        duplicates = {k: v for k, v in whmcs_orders.items() if v > 1}
        # Salesforce and WHMCS must agree Order by Order: Provisioned ⇔ the WHMCS order it
        # names is Active; Failed ⇔ no Active WHMCS order carries its marker
        disagreeing = []
        services_by_marker = self.whmcs.active_services_by_marker()
        active_by_marker = {oid: set(orders) for oid, orders in services_by_marker.items()}
        for oid in approved:
            row = rows.get(oid, {})
            status, named = row.get("Activation_Status__c"), row.get("WHMCS_Order_Id__c")
            active = active_by_marker.get(oid, set())
            if status == "Provisioned" and (named is None or int(float(named)) not in active) \
                    or status == "Failed" and active:
                disagreeing.append({"order": oid, "salesforce": status, "names": named,
                                    "whmcs": [(o["id"], o.get("status"))
                                              for o in self.whmcs.orders_for(oid)]})
        broken = set(approved) - set(provisionable)
        # an Order written back Failed has no WHMCS order in any status (a Pending one with
        # its invoice, or one cancelled after): neither a duplicate nor "disagreeing"
        # (no Active one), the at-most-once rule's zero all the same
        failed_with_order = sorted(oid for oid in approved if whmcs_orders.get(oid, 0) > 0
                                   and rows.get(oid, {}).get("Activation_Status__c") == "Failed")
        opportunities_behind = self._opportunities_behind(approved, rows, services_by_marker)
        return {
            # the write-back's other half: each Provisioned Order's Opportunity Active, naming
            # a service of its WHMCS order (of one of the Provisioned Orders sharing it)
            "opportunities_behind": len(opportunities_behind),
            "opportunities_behind_detail": opportunities_behind[:20],
            "disagreeing": len(disagreeing),
            "disagreeing_orders": disagreeing[:20],
            # every provisionable Order provisioned, every seeded broken one Failed
            "not_provisioned": sum(1 for oid in provisionable if rows.get(oid, {}).get(
                "Activation_Status__c") != "Provisioned"),
            "broken_not_failed": sum(1 for oid in broken if rows.get(oid, {}).get(
                "Activation_Status__c") != "Failed"),
            "failed_with_whmcs_order": len(failed_with_order),
            "failed_with_whmcs_order_detail": failed_with_order[:20],
            "approved": len(approved),
            "provisionable": len(provisionable),
            "whmcs_orders": sum(whmcs_orders.values()),
            "duplicates": len(duplicates),
            "duplicate_orders": sorted(duplicates)[:20],
            "missing": len(missing),
            "missing_orders": missing[:20],
            "provisioned": sum(1 for r in rows.values()
                               if r.get("Activation_Status__c") == "Provisioned"),
            "failed": sum(1 for r in rows.values() if r.get("Activation_Status__c") == "Failed"),
            "kills": len(self.kills),
        }


    def _opportunities_behind(self, approved: list[str], rows: dict[str, dict[str, Any]],
                              services_by_marker: dict[str, dict[int, set[int]]]
                              ) -> list[dict[str, Any]]:
        """The Opportunities of Provisioned Orders that the sink left behind: not ``Active``,
        or ``WHMCS_Service_ID__c`` naming none of the services of the WHMCS orders those
        Orders name (several Orders may share one Opportunity: any of theirs)."""
        services: dict[str, set[int]] = {}
        for oid in approved:
            row = rows.get(oid, {})
            opportunity, named = row.get("OpportunityId"), row.get("WHMCS_Order_Id__c")
            if row.get("Activation_Status__c") != "Provisioned" or not opportunity:
                continue
            orders = services_by_marker.get(oid, {})
            services.setdefault(opportunity, set()).update(
                orders.get(int(float(named)), set()) if named is not None else set())
        found = self.sf_records("Opportunity", sorted(services),
                                "StageName, WHMCS_Service_ID__c")
        behind = []
        for opportunity, expected in services.items():
            row = found.get(opportunity, {})
            service = row.get("WHMCS_Service_ID__c")
            if row.get("StageName") != "Active" or expected and (
                    service is None or int(float(service)) not in expected):
                behind.append({"opportunity": opportunity, "stage": row.get("StageName"),
                               "service": service, "expected": sorted(expected)})
        return behind


class PhaseIncomplete(RuntimeError):
    """A phase that did not finish in its time: its figures would measure part of the work."""


def _all_settled(phase: str, ids: list[str], rows: dict[str, dict[str, Any]]) -> None:
    done = sum(1 for oid in ids if rows.get(oid, {}).get("Activation_Status__c") in FINAL_STATES)
    if done < len(ids):
        raise PhaseIncomplete(f"{phase}: {done} of {len(ids)} Orders settled in time")


def _all_provisioned(phase: str, ids: list[str], rows: dict[str, dict[str, Any]]) -> None:
    """Every Order written back ``Provisioned``. The benches seed no Order meant to fail:
    one that does is a regression (a mapping error, a refusal before ``AddOrder``) whose
    quick failures would read as a faster pipeline making fewer WHMCS calls per Order."""
    _all_settled(phase, ids, rows)
    failed = [oid for oid in ids if rows[oid].get("Activation_Status__c") != "Provisioned"]
    if failed:
        first = rows[failed[0]]
        raise PhaseIncomplete(f"{phase}: {len(failed)} of {len(ids)} Orders Failed, e.g. "
                              f"{failed[0]}: {first.get('Activation_Error__c')!r} (the bench "
                              f"seeds none that should)")


def _one_whmcs_order_each(p: Pipeline, phase: str, ids: list[str]) -> None:
    """Exactly one WHMCS order per Order of ``ids`` (the sandbox's counts by marker): a
    phase's outcomes and write-backs alone would not show an Order created twice, or an
    outcome written without its WHMCS order."""
    counts = marker_counts(p.whmcs.counters().get("orders_by_marker") or {}, ids)
    wrong = {oid: counts.get(oid, 0) for oid in ids if counts.get(oid, 0) != 1}
    if wrong:
        oid, n = next(iter(wrong.items()))
        raise PhaseIncomplete(f"{phase}: {len(wrong)} of {len(ids)} Orders without exactly "
                              f"one WHMCS order, e.g. {oid}: {n}")


def _sf_ms(value: str) -> float:
    """A Salesforce datetime (``2026-12-03T12:00:00.400+0000``) as epoch milliseconds."""
    return dt.datetime.fromisoformat(value.replace("+0000", "+00:00")).timestamp() * 1000


def approvals_ms(p: Pipeline, order_ids: list[str]) -> dict[str, float]:
    """Each Order's approval on the Salesforce clock (epoch ms): its requests event's
    ``CreatedDate``, set by the Flow as the Order is approved (read from the requests
    topic, the whole of it). An Order without an event there is left out."""
    wanted = set(order_ids)
    out: dict[str, float] = {}
    for r in p.records(p.kafka.requests, "provision_request"):
        if r.key in wanted:
            at = r.value["CreatedDate"].timestamp() * 1000
            out[r.key] = min(at, out.get(r.key, at))
    return out


def write_backs_ms(p: Pipeline, order_ids: list[str]) -> dict[str, float]:
    """Each written-back (Provisioned or Failed) Order's write-back on the Salesforce clock
    (epoch ms): its ``LastModifiedDate``. Read it before anything else updates the Orders."""
    rows = p.sf_orders_fields(order_ids, "LastModifiedDate, Activation_Status__c")
    return {oid: _sf_ms(row["LastModifiedDate"]) for oid, row in rows.items()
            if row.get("Activation_Status__c") in FINAL_STATES}


def settle_span_s(p: Pipeline, order_ids: list[str], phase: str) -> tuple[float, int]:
    """Seconds from the first approval of ``order_ids`` to the last write-back of any of
    them, both on the Salesforce sandbox's clock, and how many were written back. Taken
    from the data, not from when a poll of :meth:`Pipeline.wait_settled` saw the last one
    (it quantized rates to its poll: 300 Orders in 0.6 s or 1.0 s both read as 1.1 s)."""
    approved = approvals_ms(p, order_ids)
    written = write_backs_ms(p, order_ids)
    if not approved:
        raise PhaseIncomplete(f"{phase}: none of the {len(order_ids)} Orders' events is in "
                              "the requests topic")
    if not written:
        return 0.0, 0
    return max(0.0, (max(written.values()) - min(approved.values())) / 1000), len(written)


def marker_counts(per_marker: dict[str, int], order_ids: list[str]) -> dict[str, int]:
    """WHMCS orders per Order of ``order_ids``, from the sandbox's counts per marker: a
    marker counts for an Order as :func:`common.whmcs.has_marker` matches it (its id, or the
    other of its 15- and 18-character forms)."""
    by_prefix: dict[str, list[str]] = {}
    for key in per_marker:
        by_prefix.setdefault(key[:15] if len(key) in (15, 18) else key, []).append(key)
    out = {}
    for oid in order_ids:
        keys = by_prefix.get(oid[:15] if len(oid) in (15, 18) else oid, [])
        count = sum(per_marker[k] for k in keys if k == oid or has_marker(marker(k), oid))
        if count:
            out[oid] = count
    return out


@contextlib.contextmanager
def pipeline(directory: Path, **kwargs: Any) -> Iterator[Pipeline]:
    with Pipeline(directory, **kwargs) as p:
        yield p


def provision_request(order_id: str, idem_key: str, *, event_uuid: str | None = None) -> bytes:
    """A requests-topic value, for tests that feed the worker directly."""
    now = int(time.time() * 1000)
    return AvroSerde("provision_request").encode({
        "event_uuid": event_uuid or str(uuid.uuid4()), "replay_id": b"\x00",
        "schema_id": "test", "channel": "/event/OrderProvisionRequested__e",
        "received_at": now, "CreatedDate": now, "CreatedById": "005000000000000AAA",
        "OrderId__c": order_id, "IdemKey__c": idem_key, "CorrelationId__c": None,
        "RequestedBy__c": "test", "Version__c": 1.0})
