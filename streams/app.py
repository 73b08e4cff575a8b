"""The Faust app: one agent over the requests topic, two tables, the sweep timer.

Processing guarantee: at-least-once delivery of events to :mod:`streams.batch`, made safe by
the tables (Faust's exactly-once mode is not used: it predates KIP-447 and has open
duplicate reports under rebalance). The agent runs with ``concurrency=1`` and takes events
in batches (``take_events``): Faust acks a batch when the agent asks for the next one —
and also when the agent's generator is closed by an exception or a shutdown. To make the
offsets move **only** after the batch's outcomes are acknowledged, each event's message is
``incref``'d on arrival and acked by us after the batch; the generator's own ack merely
drops its reference. A shutdown or crash mid-batch therefore commits nothing past it.

Nothing raises out of the agent body: a batch that fails is retried (safe — the tables make
a batch idempotent) and after ``BATCH_ATTEMPTS`` its events go to the dead-letter topic with
the error; a :class:`~streams.tables.DurabilityError` (a table change the broker did not
acknowledge) stops the worker without acking, because the local tables are then ahead of
their changelog.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, cast

import faust

from common.avro import AvroSerde, registry_from_url
from common.deadletter import dead_letter_headers
from common.settings import CommonSettings, KafkaSettings, WhmcsSettings, WorkerSettings
from common.whmcs import WhmcsClient
from streams import metrics
from streams.batch import BatchProcessor, DeadLetter, RawRecord, retry_forever
from streams.commit_gate import CommitGate, broker_reader
from streams.commit_gate import install as install_commit_gate
from streams.decide import Context
from streams.faust_producer import make_idempotent
from streams.faust_recovery import (
    read_committed,
    rewind_dropped_records,
    seek_uncommitted_to_beginning,
)
from streams.guard import Guard, QueryClient
from streams.provision import Provisioner, ProvisionPolicy
from streams.recovery import Sweeper
from streams.tables import DurabilityError, DurableTable, TableState, key_partition
from streams.watchdog import Progress, StallWatchdog, broker_lag

log = logging.getLogger(__name__)
BATCH_ATTEMPTS = 3
# faust's RocksDB defaults are per partition DB (2 tables x partitions DBs): 64 MB memtables
# x3 and a 2 GB block cache each. Memtables only flush to disk when full, so every decision
# stayed in RAM until 64 MB per DB: worker RSS grew with the Orders processed (335 MB).
ROCKSDB_OPTIONS = {"write_buffer_size": 4 << 20, "max_write_buffer_number": 2,
                   "block_cache_size": 8 << 20}


@dataclass
class Health:
    started_at: float = 0.0
    last_batch_at: float | None = None
    batches: int = 0
    batch_errors: int = 0
    last_error: str | None = None


class KafkaEmitter:
    """Outcomes and dead letters through the app's producer (acks=all), awaited."""

    def __init__(self, app: faust.App, kafka: KafkaSettings) -> None:
        self.outcomes = app.topic(kafka.outcomes, key_serializer="raw", value_serializer="raw",
                                  internal=False)
        self.dead_letters = app.topic(kafka.dead_letters, key_serializer="raw",
                                      value_serializer="raw", internal=False)
        self.serde = AvroSerde("provisioning_outcome", topic=kafka.outcomes,
                               registry=registry_from_url(kafka.schema_registry_url))
        self.headers = dict(self.serde.headers())  # empty in the Confluent format

    async def send_outcomes(self, outcomes: list[dict[str, Any]]) -> None:
        async def send() -> None:
            futs = [await self.outcomes.send(key=o["order_id"].encode(),
                                             value=self.serde.encode(o), headers=self.headers)
                    for o in outcomes]
            await asyncio.gather(*futs)
        if outcomes:
            await retry_forever("sending outcomes", send)

    async def send_dead_letters(self, letters: list[DeadLetter]) -> None:
        async def send() -> None:
            futs = []
            for letter in letters:
                rec = letter.record
                headers = dict(dead_letter_headers(
                    stage="worker", reason=letter.reason, error_class=letter.error_class,
                    error_code=letter.error_code, source_topic=rec.topic,
                    source_partition=rec.partition, source_offset=rec.offset,
                    order_id=letter.order_id, event_uuid=letter.event_uuid,
                    idem_key=letter.idem_key))
                futs.append(await self.dead_letters.send(key=rec.key, value=rec.value,
                                                         headers=headers))
            await asyncio.gather(*futs)
        if letters:
            await retry_forever("sending dead letters", send)


class Worker:
    """Builds and holds the Faust app and its parts. ``sf_client`` answers the guard query."""

    def __init__(self, *, kafka: KafkaSettings, worker: WorkerSettings, whmcs: WhmcsSettings,
                 sf_client: QueryClient, common: CommonSettings | None = None,
                 whmcs_client: WhmcsClient | None = None) -> None:
        common = common or CommonSettings.load({})
        self.kafka, self.settings = kafka, worker
        self.health = Health(started_at=time.time())
        app_id = kafka.topic(worker.app_id)
        brokers = [f"kafka://{h.strip()}" for h in kafka.bootstrap_servers.split(",")]
        datadir = common.state_dir / "worker" / app_id
        datadir.parent.mkdir(parents=True, exist_ok=True)
        self.app = faust.App(
            app_id, broker=brokers, store=worker.store,
            datadir=str(datadir), web_enabled=False,
            autodiscover=False, topic_partitions=kafka.partitions,
            topic_replication_factor=kafka.replication_factor,
            table_standby_replicas=worker.standby_replicas,
            consumer_auto_offset_reset="earliest", producer_acks=-1,
            processing_guarantee="at_least_once", broker_commit_every=1000,
            broker_commit_interval=1.0,
            # Memory: a few batches of events in flight and small fetches (an event is
            # ~0.5 KB); faust's defaults (4,096 buffered events, 1 MB per partition fetch)
            # suit bulk streams, not a worker making two HTTP calls per event.
            stream_buffer_maxsize=max(1024, worker.batch_size * 4),
            consumer_max_fetch_size=256 * 1024, broker_max_poll_records=worker.batch_size * 2,
            key_serializer="raw", value_serializer="raw",
            broker_session_timeout=worker.session_timeout_s,
            broker_heartbeat_interval=min(3.0, worker.session_timeout_s / 3),
            consumer_group_instance_id=worker.instance_id or None,
            # faust's own ends recovery in an order that drops fetched events (see module)
            TableManager="streams.faust_recovery:TableManager")
        make_idempotent(self.app)  # acks=all alone may duplicate a retried send
        table_kw: dict[str, Any] = dict(default=None, partitions=kafka.partitions, options=dict(ROCKSDB_OPTIONS),
                        schema=faust.Schema(key_type=str, key_serializer="raw",
                                            value_serializer="json"))
        self.idem = DurableTable(self.app, name="idem",
                                                     beacon=self.app.tables.beacon,
                                                     help="order id → {idem key: decision}",
                                                     **table_kw)
        self.intents = DurableTable(self.app, name="intents",
                                                        beacon=self.app.tables.beacon,
                                                        help="order id → provisioning intent",
                                                        **table_kw)
        self.app.tables.add(self.idem)
        self.app.tables.add(self.intents)
        self.whmcs = whmcs_client or WhmcsClient(whmcs)
        self.whmcs.observer = metrics.whmcs_observer
        policy = ProvisionPolicy(retry_deadline_s=worker.retry_deadline_s,
                                 whmcs_timeout_s=whmcs.timeout_s,
                                 lookup_grace_s=worker.lookup_grace_s,
                                 autosetup=whmcs.autosetup)
        self.guard = Guard(sf_client, observer=metrics.salesforce_observer)
        self.emitter = KafkaEmitter(self.app, kafka)
        self.processor = BatchProcessor(
            state=TableState(self.idem, self.intents), guard=self.guard,
            provisioner=Provisioner(self.whmcs, policy,
                                    on_retry=lambda k: metrics.RETRIES.labels(k).inc()),
            emitter=self.emitter,
            serde=AvroSerde("provision_request", topic=kafka.requests,
                            registry=registry_from_url(kafka.schema_registry_url)),
            context=Context(payment_method=whmcs.payment_method, no_invoice=whmcs.no_invoice,
                            no_email=whmcs.no_email),
            parallelism=worker.whmcs_parallelism)
        self.sweeper = Sweeper(self.processor, recovery_after_s=worker.recovery_after_s,
                               dedupe_ttl_days=worker.dedupe_ttl_days, owns=self.owns)
        self.intents.watch = self.sweeper.watch_intent
        self.idem.watch = self.sweeper.watch_idem
        self.lock = asyncio.Lock()
        self.requests = self.app.topic(kafka.requests, key_serializer="raw",
                                       value_serializer="raw", internal=False)
        self.app.agent(self.requests, name=f"{app_id}.provision", concurrency=1)(self._agent)
        seek_uncommitted_to_beginning(self.app.consumer, {kafka.requests})
        read_committed(self.app.consumer)
        # faust drops fetched records without seeking back (see streams.faust_recovery)
        self.rewinder = rewind_dropped_records(self.app.consumer)
        # faust can commit past events it fetched and dropped: check each commit (see module)
        self.commit_gate = CommitGate(kafka.requests, broker_reader(
            kafka.bootstrap_servers, app_id, kafka.requests))
        install_commit_gate(self.commit_gate, self.app.consumer)
        self.app.timer(worker.sweep_interval_s, on_leader=False)(self._sweep)
        self.assigned: set[int] = set()
        self.app.on_partitions_assigned.connect(self._on_assigned)  # type: ignore[arg-type]
        self.progress = Progress()
        self.watchdog: StallWatchdog | None = None
        if worker.stall_timeout_s > 0:
            self.watchdog = StallWatchdog(
                lag=broker_lag(kafka.bootstrap_servers, app_id, kafka.requests),
                owned=lambda: set(self.assigned), progress=self.progress,
                timeout_s=worker.stall_timeout_s,
                interval_s=min(10.0, max(1.0, worker.stall_timeout_s / 6)),
                recovery_position=self._recovery_position,
                diagnose=self.diagnose, reseek=self._reseek)  # started by __main__

    def diagnose(self) -> dict[str, Any]:
        """faust's gates between the broker and the agent (read from the watchdog thread)."""
        app: Any = self.app  # faust's internals, read as they are
        out: dict[str, Any] = {}
        probes = {
            "flow_active": lambda: app.consumer.flow_active,
            "flow_control_active": lambda: app.flow_control.is_active(),
            "rebalancing": lambda: app.rebalancing,
            "recovery_completed": lambda: app.tables.recovery.completed.is_set(),
            "active_partitions": lambda: sorted(
                tp.partition for tp in (app.consumer._active_partitions or ())
                if tp.topic == self.kafka.requests),
            "paused_partitions": lambda: sorted(
                tp.partition for tp in app.consumer._paused_partitions
                if tp.topic == self.kafka.requests),
            "read_offsets": lambda: {tp.partition: off for tp, off
                                     in app.consumer._read_offset.items()
                                     if tp.topic == self.kafka.requests},
            "unacked_messages": lambda: len(app.consumer._unacked_messages),
            "agent_queue": lambda: self.requests.queue.qsize(),
            "lock_held": lambda: self.lock.locked(),
        }
        for name, probe in probes.items():
            try:
                out[name] = probe()
            except Exception as exc:  # noqa: BLE001 - diagnostics only
                out[name] = f"? {type(exc).__name__}"
        return out

    def _reseek(self) -> None:
        """From the watchdog thread: seek the stream partitions to their committed offsets."""
        if self.app.rebalancing:
            return  # a rebalance seeks by itself when (if) it completes
        future = asyncio.run_coroutine_threadsafe(self.app.consumer.perform_seek(),
                                                  self.app.loop)
        future.result(timeout=30)

    def _recovery_position(self) -> int:
        try:
            recovery = cast(Any, self.app.tables).recovery
            return int(sum(recovery.active_offsets.values()))
        except Exception:  # noqa: BLE001 - read from another thread; best effort
            return 0

    async def _on_assigned(self, app: Any, assigned: Any, **_kw: Any) -> None:
        self.assigned = {tp.partition for tp in assigned if tp.topic == self.kafka.requests}
        self.progress.touch()  # recovery of the new assignment starts now
        self.sweeper.rescan()  # entries of new partitions may predate the index
        log.info("requests partitions assigned: %s", sorted(self.assigned))

    # -- ownership ---------------------------------------------------------------------

    def owns(self, order_id: str) -> bool:
        """True when this worker actively owns the Order's partition (not standby)."""
        try:
            actives = self.app.assignor.assigned_actives()
        except Exception:  # noqa: BLE001 - before the first assignment
            return False
        partition = key_partition(order_id, self.kafka.partitions)
        return any(tp.topic == self.kafka.requests and tp.partition == partition
                   for tp in actives)

    # -- the agent ---------------------------------------------------------------------

    async def _agent(self, stream: Any) -> None:
        async for events in stream.take_events(self.settings.batch_size,
                                               within=self.settings.batch_linger_s):
            for event in events:
                event.message.incref()  # we ack after the outcomes are acknowledged
            await self.handle(events)
            for event in events:
                self.commit_gate.finished(event.message.partition, event.message.offset)
                await stream.ack(event)

    async def handle(self, events: list[Any]) -> None:
        """Process one batch. Never raises (except cancellation), never returns early."""
        records = [RawRecord(e.message.key, e.message.value, e.message.topic,
                             e.message.partition, e.message.offset,
                             received_at=e.message.time_in or time.monotonic(),
                             headers=e.message.headers)
                   for e in events]
        metrics.BATCH_SIZE.observe(len(records))
        self.progress.started()
        try:
            await self._handle(records)
        finally:
            self.progress.finished()

    async def _handle(self, records: list[RawRecord]) -> None:
        error: BaseException | None = None
        async with self.lock:
            for attempt in range(1, BATCH_ATTEMPTS + 1):
                try:
                    started = time.monotonic()
                    report = await self.processor.process(records)
                    log.info("batch done: %d events, %d outcomes, %d dead letters",
                             report.events, report.outcomes, report.dead_letters,
                             extra={"duration_ms": int((time.monotonic() - started) * 1000),
                                    "count": report.events, "steps_ms": report.steps_ms})
                    metrics.BATCHES.labels("ok").inc()
                    self.health.batches += 1
                    self.health.last_batch_at = time.time()
                    return
                except asyncio.CancelledError:
                    raise
                except DurabilityError as exc:
                    await self._stop_without_ack(exc)
                except Exception as exc:  # noqa: BLE001 - the catch-all the design requires
                    error = exc
                    self.health.batch_errors += 1
                    self.health.last_error = f"{type(exc).__name__}: {exc}"
                    metrics.BATCHES.labels("error").inc()
                    log.exception("batch failed (attempt %d/%d)", attempt, BATCH_ATTEMPTS)
                    await asyncio.sleep(min(2.0 ** attempt, 10.0))
            letters = [DeadLetter(r, f"worker could not process the batch: {error!r}",
                                  type(error).__name__, "WORKER_ERROR") for r in records]
            await self.emitter.send_dead_letters(letters)
            for _ in letters:
                metrics.DEAD_LETTERS.labels("WORKER_ERROR").inc()

    async def _stop_without_ack(self, exc: BaseException) -> None:
        log.critical("table changelog not durable; stopping without acknowledging the batch",
                     extra={"cause": repr(exc)})
        await self.app.crash(exc)  # type: ignore[arg-type]
        await asyncio.Event().wait()  # cancelled by the shutdown; never acks

    async def _sweep(self) -> None:
        try:
            await self.sweeper.run_once(lock=self.lock)
        except asyncio.CancelledError:
            raise
        except DurabilityError as exc:
            await self._stop_without_ack(exc)
        except Exception:  # noqa: BLE001 - the sweep must not kill the worker
            log.exception("sweep failed")

    # -- health ------------------------------------------------------------------------

    def check(self) -> tuple[bool, dict[str, Any]]:
        since = self.guard.unavailable_since
        sf_down = since is not None and time.time() - since > 60
        refused = self.processor.provisioner.access_refused_since
        whmcs_refused = refused is not None and time.time() - refused > 60
        details = {"batches": self.health.batches, "batch_errors": self.health.batch_errors,
                   "last_batch_at": self.health.last_batch_at,
                   "last_error": self.health.last_error,
                   "salesforce_unavailable_since": since,
                   "salesforce_last_error": self.guard.last_error,
                   "whmcs_calls": dict(self.whmcs.calls), "guard_queries": self.guard.queries,
                   "whmcs_access_refused_since": refused,
                   "whmcs_access_error": self.processor.provisioner.access_error,
                   "assigned_partitions": sorted(self.assigned),
                   "idle_s": round(self.progress.idle_for(), 1),
                   "stall_check_error": self.watchdog.last_error if self.watchdog else None}
        return not (sf_down or whmcs_refused), details
