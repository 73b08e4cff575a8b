"""The provisioning worker: the faust app, its agent, and the parts it wires together.

The agent takes the requests topic's events as they come and hands each to its Order's lane
(:mod:`streams.lanes`); :mod:`streams.handler` takes one event end to end. Offsets are
committed by the worker's own :class:`~streams.checkpoint.Checkpoint` — only the contiguous
prefix of finished events per partition — never by faust (the worker releases faust's
messages instead of acknowledging them). Faust's exactly-once mode is not used: it predates
KIP-447 and has open duplicate reports under rebalance; the tables make redelivery safe.

Nothing raises out of the agent: an event whose handling fails is retried and then
dead-lettered (:class:`~streams.handler.EventHandler`); a table change the broker did not
acknowledge (:class:`~streams.state.DurabilityError`) stops the worker without committing,
because the local tables are then ahead of their changelogs. A write the broker refuses this
principal (an ACL: outcomes, dead letters, changelogs) is not retried: one line names the
operation and principal and the worker stops with its configuration exit code, 64
(:meth:`Worker.refuse`, :mod:`streams.__main__`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from functools import partial
from typing import Any, cast

from common.avro import AvroSerde, registry_for
from common.backoff import retry_forever
from common.connection import KafkaConnection, Refusal, aiokafka_refusal, refusal_message
from common.kafka import is_transient
from common.settings import CommonSettings, KafkaSettings, WhmcsSettings, WorkerSettings
from common.whmcs import WhmcsClient
from streams import faust_seam, metrics
from streams.checkpoint import Checkpoint, broker_reader
from streams.decide import Context, Event
from streams.emitter import KafkaEmitter, refused_what
from streams.guard import Guard, GuardReads, QueryClient
from streams.handler import DeadLetter, EventHandler, RawRecord, decode
from streams.lanes import Admitted, Lanes
from streams.lease import Fenced, LeaseCheck, Own, OwnershipLease
from streams.observability import WorkerOps
from streams.provision import Provisioner, ProvisionPolicy
from streams.recovery import Sweeper
from streams.repair import ChangelogReader, ChangelogRepair
from streams.state import DurabilityError, GroupCommit, OrderState
from streams.watchdog import Progress, StallWatchdog, exit_to_rejoin, unowned

log = logging.getLogger(__name__)
# faust's RocksDB defaults are per partition DB (2 tables x partitions DBs): 64 MB memtables
# x3 and a 2 GB block cache each; sized for this table instead (docs/decisions/0004).
# At most 2 x 2 MB of memtable per DB (8 + 8 MB each put the worker's peak RSS at 223 MB in
# make bench) and about 8 MB for all of them together (2 tables x 6 partitions would otherwise
# hold up to 48 MB; a soft limit, so that writes never stall: memtables being flushed count
# on top, ~10 MB seen in a burst), and one 8 MB block cache for all of them that also holds the files'
# indexes and filters (faust_seam.BoundedRocksDBOptions: outside a cache they grew with the
# Orders kept). sfprov_worker_rocksdb_bytes shows each. No RocksDB write-ahead log: the
# changelogs are the tables' log (as in Kafka Streams).
ROCKSDB_OPTIONS = {"write_buffer_size": 2 << 20, "max_write_buffer_number": 2,
                   "block_cache_size": 1 << 20, "shared_block_cache_size": 8 << 20,
                   "shared_write_buffer_size": 8 << 20, "disable_wal": True}
BUSY_IN_FLIGHT = 200  # Orders in flight that make a backlog (50/s at ~200 ms keeps ~10)
INTAKE_CHUNK = 500  # events taken from faust's stream at once (then handed out one by one)
INTAKE_WITHIN_S = 0.005


def rebalance_timeout_s(worker: WorkerSettings) -> float:
    """How long the coordinator waits for members to rejoin a rebalance (faust's
    ``broker_rebalance_timeout``): at least the session, which the ownership lease counts
    on (streams.lease); the stall watchdog waits a rebalance out for as long."""
    return max(60.0, worker.session_timeout_s)


class Worker:
    """Builds and holds the faust app and its parts. ``sf_client`` answers the guard query."""

    # since when the agent's decode waits for the schema registry, and why (/readyz)
    registry_unavailable_since: float | None = None
    registry_last_error: str | None = None

    def __init__(self, *, kafka: KafkaSettings, worker: WorkerSettings, whmcs: WhmcsSettings,
                 sf_client: QueryClient, common: CommonSettings | None = None,
                 whmcs_client: WhmcsClient | None = None) -> None:
        common = common or CommonSettings.load({})
        self.kafka, self.settings = kafka, worker
        self.started_at = time.time()
        app_id = kafka.topic(worker.app_id)
        datadir = common.state_dir / "worker" / app_id
        datadir.parent.mkdir(parents=True, exist_ok=True)
        # every Kafka client below (faust's, the checkpoint's, the watchdog's) from one
        # connection (TLS, SASL: common.connection)
        conn = self.connection = KafkaConnection.from_settings(kafka)
        # the broker's refusal that stops the worker (exit 64: streams.__main__), and how it
        # stops: streams.__main__ makes it the operator's SIGTERM (drain, commit, stop)
        self.refused: str | None = None
        self.stop: Callable[[], Any] = lambda: asyncio.ensure_future(self.app.stop())
        self.app = faust_seam.build_app(
            app_id, **conn.faust(), store=worker.store, datadir=str(datadir), web_enabled=False, autodiscover=False,
            topic_partitions=kafka.partitions, topic_replication_factor=kafka.replication_factor,
            table_standby_replicas=worker.standby_replicas, consumer_auto_offset_reset="earliest",
            producer_acks=-1, processing_guarantee="at_least_once",
            # Memory: faust's defaults (4,096 buffered events, 1 MB per partition fetch) suit
            # bulk streams, not a worker making two HTTP calls per event.
            stream_buffer_maxsize=max(1024, worker.max_in_flight), consumer_max_fetch_size=256 * 1024,
            broker_max_poll_records=INTAKE_CHUNK, key_serializer="raw", value_serializer="raw",
            broker_session_timeout=worker.session_timeout_s,
            # the coordinator also drops a member that has not rejoined a rebalance within
            # this: it must be at least the ownership lease (streams.lease), which counts
            # only heartbeats — faust's 60 s under a session timeout above that let a member
            # paused for longer write to WHMCS after its partitions moved
            broker_rebalance_timeout=rebalance_timeout_s(worker),
            broker_heartbeat_interval=min(3.0, worker.session_timeout_s / 3),
            consumer_group_instance_id=worker.instance_id or None)
        table_kw: dict[str, Any] = dict(
            default=None, partitions=kafka.partitions, options=dict(ROCKSDB_OPTIONS),
            # a changelog record that does not decode is restored, not waited for (the seam)
            schema=faust_seam.ChangelogSchema(key_type=str, key_serializer="raw",
                                              value_serializer="json"))
        self.idem = faust_seam.DurableTable(self.app, name="idem", beacon=self.app.tables.beacon,
                                            help="order id → {idem key: decision}", **table_kw)
        self.intents = faust_seam.DurableTable(self.app, name="intents",
                                               beacon=self.app.tables.beacon,
                                               help="order id → provisioning intent", **table_kw)
        self.app.tables.add(self.idem)
        self.app.tables.add(self.intents)
        self.state = OrderState(cast(Any, self.idem), cast(Any, self.intents), self._flush)
        self.state.watched = True
        self.durable = GroupCommit(self.state.flush)

        # Who writes this process's intents, and whether it still owns an Order's partition
        # when it is about to write to WHMCS (streams.lease, fed by streams.faust_seam).
        self.writer_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.lease = OwnershipLease(session_timeout_s=worker.session_timeout_s,
                                    margin_s=worker.lease_margin)
        faust_seam.watch_membership(app_id, faust_seam.LeaseAdapter(
            self.lease, kafka.requests,
            unbacked=lambda reason: exit_to_rejoin(f"{reason}; no WHMCS write was made for them"),
            regranted=exit_to_rejoin,
            changelogs=[t.changelog_topic.get_topic_name() for t in (self.idem, self.intents)]))

        # another writer's late records among the tables' own: the owner's values sent
        # again, so that the changelogs end with them (streams.repair)
        self.changelogs = ChangelogReader(conn, app_id)
        self.repair = ChangelogRepair(self.lease, self.changelogs, self.durable,
                                      busy=self._rebalancing)
        for table in (self.idem, self.intents):
            table.on_foreign = self.repair.foreign
            table.on_skipped = self.repair.skipped
            table.generation = self._generation
            table.stamp_generation = self._last_generation
            table.writer = self.writer_id
            table.held = self.lease.held_since

        self.ops = WorkerOps(self)  # probes, gauges, tracing (streams.observability)
        self.whmcs = whmcs_client or WhmcsClient(
            whmcs, max_connections=max(64, worker.whmcs_parallelism))
        self.whmcs.observer = self.ops.whmcs_observer
        self.guard = Guard(sf_client, observer=self.ops.salesforce_observer)
        self.reads = GuardReads(self.guard, linger_s=worker.guard_linger_s,
                                busy_linger_s=worker.guard_linger_busy_s,
                                busy=lambda: self.lanes.in_flight >= BUSY_IN_FLIGHT,
                                max_ids=worker.guard_batch,
                                on_read=metrics.GUARD_READS.observe)
        self.provisioner = Provisioner(
            self.whmcs, ProvisionPolicy(retry_deadline_s=worker.retry_deadline_s,
                                        whmcs_timeout_s=whmcs.timeout_s,
                                        lookup_grace_s=worker.lookup_grace_s,
                                        autosetup=whmcs.autosetup),
            parallelism=worker.whmcs_parallelism,
            on_retry=lambda kind: metrics.RETRIES.labels(kind).inc())
        self.emitter = KafkaEmitter(self.app, kafka)
        self.emitter.outcome_headers = self.ops.outcome_headers
        self.emitter.on_refused = self.refuse
        self.serde = AvroSerde("provision_request", topic=kafka.requests,
                               registry=registry_for(kafka))
        self.handler = EventHandler(
            state=self.state, reads=self.reads, provisioner=self.provisioner,
            emitter=self.emitter, durable=self.durable,
            context=Context(payment_method=whmcs.payment_method, no_invoice=whmcs.no_invoice,
                            no_email=whmcs.no_email),
            lease=self.lease, writer_id=self.writer_id, intent_lease_s=worker.intent_lease_s,
            guard_max_age_s=worker.guard_max_age_s)

        self.requests = self.app.topic(kafka.requests, key_serializer="raw",
                                       value_serializer="raw", internal=False)
        self.consumer = faust_seam.ConsumerSeam(self.app, kafka.requests)
        self.checkpoint = Checkpoint(broker_reader(conn, app_id, kafka.requests),
                                     commit=self.consumer.commit,
                                     seek=self.consumer.seek_before_next_fetch)
        self.progress = Progress()
        self.lanes = Lanes(self.checkpoint, self.consumer.release,
                           max_in_flight=worker.max_in_flight,
                           partition_window=worker.partition_window,
                           pause=self.consumer.pause, resume=self.consumer.resume,
                           on_leave=self._left, on_crash=self._crash)
        self.progress.busy = lambda: self.lanes.in_flight > 0
        # a stop's drain ends here (monotonic), counted from its first call: faust waits
        # empty twice on a stop (the app's, then its consumer's own on_stop)
        self._drain_deadline: float | None = None
        self.consumer.before_wait_empty(self._leaving)
        self.app.agent(self.requests, name=f"{app_id}.provision", concurrency=1)(self._agent)
        self.app.timer(worker.commit_interval_s, on_leader=False)(self._commit)

        self.sweeper = Sweeper(self.state, self.provisioner, self.emitter,
                               lanes=self.lanes, recovery_after_s=worker.recovery_after_s,
                               dedupe_ttl_days=worker.dedupe_ttl_days, owns=self.owns,
                               fence_for=self._sweep_fence, durable=self.durable,
                               writer_id=self.writer_id,
                               intent_lease_s=worker.intent_lease_s)
        self.idem.watch = self.sweeper.watch_idem
        self.intents.watch = self.sweeper.watch_intent
        self.app.timer(worker.sweep_interval_s, on_leader=False)(self._sweep)
        self.assigned: set[int] = set()
        # weak: faust's signal keeps its receivers in the App class's one Signal (keyed by
        # app), so a strong one would keep this Worker, and its Kafka clients, for good;
        # whoever runs the Worker holds it (streams.__main__: for the process's life)
        self.app.on_partitions_assigned.connect(
            self._on_assigned, weak=True)  # type: ignore[arg-type]
        self.watchdog: StallWatchdog | None = None
        if worker.stall_timeout_s > 0:
            self.watchdog = StallWatchdog(
                lag=self.ops.lag.read,  # the lag gauges' reader: one set of clients
                owned=lambda: set(self.assigned), progress=self.progress,
                timeout_s=worker.stall_timeout_s,
                interval_s=min(10.0, max(1.0, worker.stall_timeout_s / 6)),
                recovery_position=self.consumer.recovery_position,
                diagnose=self.diagnose, reseek=self.consumer.reseek,
                orphans=partial(unowned, conn, app_id, kafka.requests),
                rebalancing=lambda: bool(self.app.rebalancing),
                rebalance_limit_s=rebalance_timeout_s(worker) + 30.0)  # started by __main__
        self.events = 0
        self.fenced = 0
        self.last_event_at: float | None = None

    async def _flush(self) -> None:
        metrics.GROUP_COMMITS.inc()
        await asyncio.gather(self.idem.flush(), self.intents.flush())

    # -- the agent: events in --------------------------------------------------------------

    async def _agent(self, stream: Any) -> None:
        async for events in stream.take_events(INTAKE_CHUNK, within=INTAKE_WITHIN_S):
            for event in events:
                self.consumer.hold(event.message)  # released by the lanes
            # held, not in the lanes yet: a revoke of their generation releases them
            self.lanes.taken((e.message, e.message.generation_id) for e in events)
            try:
                records = [RawRecord(e.message.key, e.message.value, e.message.topic,
                                     e.message.partition, e.message.offset,
                                     received_at=e.message.time_in or time.monotonic(),
                                     headers=e.message.headers,
                                     generation=e.message.generation_id)
                           for e in events]
                decoded: list[Event | DeadLetter] | None
                if all(self.serde.offline(r.value, r.headers) for r in records):
                    decoded = self._decode(records)  # every writer's schema is cached
                else:
                    # In a thread: a schema registry lookup must not block the loop; retried
                    # while the registry is down (not the records' fault) — until a
                    # rebalance revokes the chunk's generation (its messages were released
                    # then: faust redelivers them from the committed offsets).
                    decoded = await retry_forever("decoding requests (schema registry)",
                                                  partial(self._decode_unless_revoked, records),
                                                  on_retry=self._registry_failed)
                    self.registry_unavailable_since = self.registry_last_error = None
                    if decoded is None:
                        log.info("rebalance: a chunk of %d event(s) waiting for the schema "
                                 "registry given up (redelivered from the committed offsets)",
                                 len(records))
                        continue
            finally:
                self.lanes.taken(())
            for event, rec, item in zip(events, records, decoded, strict=True):
                await self._admit(event.message, rec, item)

    def _registry_failed(self, exc: BaseException) -> None:
        """A decode attempt failed (the schema registry unreachable) and is retried: the
        wait is the worker's progress, as an event's wait on Salesforce or WHMCS is — the
        stall watchdog would otherwise re-seek and exit 75 for as long as the registry is
        away, and each restart (its schema cache empty) would wait the same way — and
        ``/readyz`` says what it waits for."""
        self.progress.touch()
        if self.registry_unavailable_since is None:
            self.registry_unavailable_since = time.time()
        self.registry_last_error = (f"waiting for the schema registry: "
                                    f"{type(exc).__name__}: {exc}")

    def _decode(self, records: list[RawRecord]) -> list[Event | DeadLetter]:
        return [decode(self.serde, r) for r in records]

    async def _decode_unless_revoked(self, records: list[RawRecord]
                                     ) -> list[Event | DeadLetter] | None:
        """One attempt at decoding ``records`` in a thread; None once a rebalance revoked
        the generation they were fetched in (asked before each attempt)."""
        if all(self.lanes.revoked(r.generation) for r in records):
            return None
        return await asyncio.to_thread(self._decode, records)

    async def _admit(self, message: Any, rec: RawRecord, item: Event | DeadLetter) -> None:
        self.events += 1
        self.last_event_at = time.time()
        self.progress.touch()
        # a dead letter runs outside its Order's lane: its span is not the Order's (the
        # Order's next event, run meanwhile, would have its calls and outcome in it)
        self.ops.event_started(message, of_order=not isinstance(item, DeadLetter))
        if isinstance(item, DeadLetter):
            async def dead() -> bool:
                await self.emitter.send_dead_letter(item)
                metrics.DEAD_LETTERS.labels(item.error_code or item.error_class).inc()
                return True
            await self.lanes.run_alone(Admitted(rec.partition, rec.offset, message, dead,
                                                generation=rec.generation))
            return

        async def work(event: Event = item) -> bool:
            finished = await self.handler.handle(event, rec)
            if not finished:
                self.fenced += 1
            return finished
        await self.lanes.admit(item.order_id, Admitted(rec.partition, rec.offset, message, work,
                                                       generation=rec.generation))

    def _left(self, item: Admitted) -> None:
        """An event left the worker (finished, fenced, or released by a rebalance)."""
        self.progress.touch()
        self.ops.event_finished(item.message)
        metrics.EVENTS.labels(item.result).inc()

    # -- commits, rebalances, stopping -----------------------------------------------------

    async def _commit(self) -> None:
        try:
            await self.checkpoint.commit()
            self.lanes.committed()
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - the next commit tries again
            log.exception("commit failed")

    async def _leaving(self, stopping: bool, generation: int | None = None) -> None:
        """faust is about to wait for unacknowledged messages: a rebalance (release every
        event; its partition may be someone else's in a moment) or a stop (let the events
        finish for up to ``WORKER_DRAIN_TIMEOUT_S`` first). Then commit what is finished.
        ``generation``: the one being revoked (:meth:`ConsumerSeam.before_wait_empty`);
        None, not known: the generations of the events seen so far."""
        if stopping:
            # one drain per stop, however often faust waits empty (twice: the app's stop,
            # then its consumer's): the second waited the whole WORKER_DRAIN_TIMEOUT_S
            # again on the same hung events, past the supervisor's grace (SIGKILL)
            if self._drain_deadline is None:
                self._drain_deadline = time.monotonic() + self.settings.drain_timeout_s
            left = await self.lanes.drain(max(0.0, self._drain_deadline - time.monotonic()))
            if left:
                log.warning("stopping with %d event(s) unfinished; they are redelivered", left)
            # The worker leaves the group now: faust's stop calls no revoke listener and
            # aiokafka's LeaveGroup passes no heartbeat hook, so the lease would hold for up
            # to a session after the last heartbeat while the partitions are restored
            # elsewhere — an event left running (waiting for a WHMCS slot, a guard read)
            # could still write to WHMCS. It is fenced from here on: nothing after this
            # needs the lease (the commit does not ask it; finished events were sent).
            self.lease.lost()
        await self._commit()
        # the generation being revoked: its events that reach the lanes later are released
        # at once, even if none of them did before (the agent was waiting for their chunk's
        # decode); so are that chunk's messages, now
        released = self.lanes.revoke(generation)
        if released and not stopping:
            log.info("rebalance: %d event(s) in flight released (redelivered from the "
                     "committed offsets)", released)

    def refuse(self, what: str, refusal: Refusal) -> None:
        """The broker refused this principal ``what`` (an ACL is missing): one line, the
        first time, and the worker stops (:attr:`stop`: events in flight may finish, the
        finished ones are committed); its exit code is then 64 (:mod:`streams.__main__`),
        which the supervisor does not restart."""
        if self._refused(what, refusal, "stopping the worker"):
            self.stop()

    def crashed(self, reason: BaseException | None) -> None:
        """faust stopped on ``reason``: a refusal of this principal — its consumer refused
        the requests topic (READ) or its group — is said in one line like :meth:`refuse`'s,
        and the exit is then 64, not a crash restarted for ever (an ACL removed while the
        worker runs; a missing one is found at start-up, :mod:`streams.__main__`)."""
        refusal = aiokafka_refusal(reason)
        if refusal is None:
            return
        if refusal.code == 30:  # GroupAuthorizationFailedError
            what = f"join the group {refusal.resource or self.app.conf.id}"
        else:
            what = f"read {refusal.resource or self.kafka.requests}"
        self._refused(what, refusal, "the worker stopped")

    def _refused(self, what: str, refusal: Refusal, then: str) -> bool:
        if self.refused is not None:
            return False  # said once; the worker is stopping already
        self.refused = f"{refusal_message(self.connection, what, refusal)}; {then}"
        log.error("%s", self.refused)
        return True

    def _crash(self, exc: BaseException) -> None:
        refusal = aiokafka_refusal(exc)
        if refusal is not None:  # a changelog write refused (an ACL): not durable either
            changelogs = f"write the tables' changelogs ({self.kafka.topic(self.settings.app_id)}-…)"
            self._refused(refused_what(changelogs, None, refusal), refusal,
                          "stopping the worker without committing")
        else:
            log.critical("table changelog not durable; stopping without committing",
                         extra={"cause": repr(exc)})
        asyncio.ensure_future(self.app.crash(exc))  # type: ignore[arg-type]

    async def _on_assigned(self, app: Any, assigned: Any, **_kw: Any) -> None:
        self.assigned = {tp.partition for tp in assigned if tp.topic == self.kafka.requests}
        self.lanes.assigned(self.consumer.generation())  # the same generation given back
        self.progress.touch()  # recovery of the new assignment starts now
        self.sweeper.rescan()  # entries of new partitions may predate the index
        log.info("requests partitions assigned: %s", sorted(self.assigned))

    def _generation(self) -> int | None:
        return self.lease.generation

    def _last_generation(self) -> int | None:
        return self.lease.last_generation

    def _rebalancing(self) -> bool:
        """A rebalance or a table restore under way: the tables may not hold yet what the
        changelogs do."""
        return bool(self.app.rebalancing or self.app.in_recovery)

    # -- the sweep -------------------------------------------------------------------------

    def owns(self, order_id: str) -> bool:
        """True when this worker actively owns the Order's partition (not standby) and its
        tables are settled: not while a rebalance or a restore is under way — a table being
        restored does not hold yet what its changelog does (an intent read ``pending`` that
        its own changelog settles a few records later)."""
        if self._rebalancing():
            return False
        partition = faust_seam.key_partition(order_id, self.kafka.partitions)
        return partition in self.consumer.assigned_partitions()

    def _sweep_fence(self, order_id: str) -> Own:
        """The sweep's lease for one Order's job: the lease in the generation the job began
        in (made when the job starts), so a partition lost and regained meanwhile — another
        owner may have acted on the Order — fences it, as an event's lease check would. The
        job's WHMCS writes also renew the intent's lease first (streams.recovery)."""
        partition = faust_seam.key_partition(order_id, self.kafka.partitions)
        began = self.lease.generation

        async def fence(action: str) -> LeaseCheck:
            if began is None:
                # begun while no generation was known (between a rebalance's heartbeat and
                # faust's revoke): no generation to hold it to, and a partition lost and
                # regained during the job would pass a check of the current one
                raise Fenced(LeaseCheck(False, "no generation known when the sweep job began",
                                        lost=True), stage=action)
            check = self.lease.check(partition, began)
            if not check.ok:
                raise Fenced(check, stage=action)
            return check
        return fence

    async def _sweep(self) -> None:
        if self._rebalancing():
            return  # the tables are being restored: the next tick looks
        try:
            await self.sweeper.run_once()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the sweep must not kill the worker
            if isinstance(exc, DurabilityError):
                self._crash(exc)
                return
            log.exception("sweep failed")
        if not self._rebalancing():  # again: a rebalance may have begun while it ran, and a
            # partition just assigned must not be stamped before its restore asks whether
            # its store is stale (the check and the stamps are synchronous: nothing between)
            for table in (self.idem, self.intents):  # held stores are current, written or not
                table.touch_held(self.lease.owned_partitions,
                                 lambda partition: self.lease.current(partition).ok)
        try:  # late records in partitions gone quiet since (streams.repair), once the
            # tables' writes no event made durable (the claims of a restore) are
            await self.durable()
            await self.repair.check_idle([self.idem, self.intents], self.changelogs.high)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - looked at again at the next sweep
            if isinstance(exc, DurabilityError):
                self._crash(exc)
                return
            if is_transient(exc):  # a broker failing over, a cut: no traceback for that
                log.warning("looking for late changelog records: the brokers did not answer "
                            "(%s); looked at again at the next sweep", exc)
                return
            log.exception("looking for late changelog records failed")

    # -- health ----------------------------------------------------------------------------

    def diagnose(self) -> dict[str, Any]:
        """What the stall watchdog logs: faust's gates and the lanes (from its thread)."""
        return {**self.consumer.diagnose(), "in_flight": self.lanes.in_flight,
                "unfinished": self.checkpoint.unfinished()}

    def details(self) -> dict[str, Any]:
        """What ``/readyz`` shows beside its checks (:meth:`WorkerOps.ready` judges them)."""
        return {"events": self.events, "in_flight": self.lanes.in_flight,
                "event_errors": self.handler.errors, "last_error": self.handler.last_error,
                "last_event_at": self.last_event_at, "fenced": self.fenced,
                "salesforce_unavailable_since": self.guard.unavailable_since,
                "salesforce_last_error": self.guard.last_error,
                "schema_registry_unavailable_since": self.registry_unavailable_since,
                "schema_registry_last_error": self.registry_last_error,
                "whmcs_calls": dict(self.whmcs.calls), "guard_queries": self.guard.queries,
                "whmcs_access_refused_since": self.provisioner.access_refused_since,
                "whmcs_access_error": self.provisioner.access_error,
                "assigned_partitions": sorted(self.assigned),
                "event_loop": type(self.app.loop).__module__.partition(".")[0],
                "commits": self.checkpoint.commits, "commit_holds": self.checkpoint.holds,
                "offset_gaps": self.consumer.offset_gaps(),
                "idle_s": round(self.progress.idle_for(), 1),
                "stall_check_error": self.watchdog.last_error if self.watchdog else None,
                "kafka_refused": self.refused}
