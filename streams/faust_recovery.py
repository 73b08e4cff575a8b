"""The end of faust's table recovery, in an order that cannot lose fetched events.

The bug (faust-streaming 0.15.3, ``faust.tables.recovery.Recovery.on_recovery_completed``):
when recovery of the tables ends, faust

1. resumes the stream partitions (``consumer.resume_partitions``),
2. *awaits* ``consumer.perform_seek()`` (one OffsetFetch round trip per partition), and
3. calls ``app.flow_control.resume()`` — which **clears every channel queue**
   (``FlowControlEvent.resume`` → ``clear()`` on the queues made with
   ``clear_on_resume=True``, i.e. every agent's input queue).

The fetcher is already running during step 2 (flow was resumed to read the changelogs), so
records of the just-resumed stream partitions are drained from aiokafka into the agent's
queue while the seek is awaited — and step 3 throws them away. aiokafka's position and
faust's read offset are already past them and they were never acked: nothing redelivers
them until the next rebalance or restart. With ``take_events`` this is easy to hit (the
agent holds one batch, the rest waits in the queue): in the two-worker crash test the
survivor took over the killed worker's partition, processed two batches, and then sat idle
with 17 events of that partition unprocessed (4 runs in 6). No event was lost for good —
the committed offset stayed behind them — but the pipeline stalled.

:class:`OrderedRecovery` ends recovery in the order that makes the clear harmless: seek the
stream partitions to their committed offsets **while they are still paused**, clear the
queues, and only then resume the stream partitions and the flow. Nothing of a stream
partition can be in a queue when it is cleared, because nothing was fetched for it yet.

Installed with ``faust.App(..., TableManager="streams.faust_recovery:TableManager")``.

A second hole, same family: a fetch that was started before a rebalance can return records of
a partition that the rebalance has just assigned (faust's set of active partitions is shared
with the consumer thread and already includes it). faust drops those records because the flow
is stopped and "seeks back to the committed offsets" — but a partition that has **no committed
offset** yet (its previous owner died before its first commit) is not moved by aiokafka's
``seek_to_committed``, so its position stays past the dropped records and they are never
processed: in the two-worker crash test the survivor sat idle with 36 events of the dead
worker's partition, and did again after a restart. :func:`seek_uncommitted_to_beginning`
makes "seek to committed" mean what the group's ``auto.offset.reset=earliest`` means for such
a partition: its beginning.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any, cast

from faust.tables.manager import TableManager as FaustTableManager
from faust.tables.recovery import Recovery


class OrderedRecovery(Recovery):
    async def on_recovery_completed(self, generation_id: int = 0) -> None:
        app, consumer = self.app, self.app.consumer
        self.log.info("Restore complete!")
        await app.on_rebalance_complete.send()
        self._set_recovery_ended()
        callbacks = [asyncio.ensure_future(table.on_recovery_completed(
            self.actives_for_table[table], self.standbys_for_table[table]))
            for table in self.tables.values()]
        if callbacks:
            await asyncio.wait(callbacks)
        if app.consumer_generation_id != generation_id:
            self.log.warning("Recovery rebalancing again: generation %r, now %r",
                             generation_id, app.consumer_generation_id)
            return
        stream_tps = {tp for tp in consumer.assignment() if not self._is_changelog_tp(tp)}
        # Keep the stream partitions paused across the (awaited) seek: nothing of theirs
        # can reach a queue before the clear below.
        consumer.pause_partitions(stream_tps)
        if stream_tps:
            self.log.info("Seek stream partitions to committed offsets (still paused).")
            await self._wait(consumer.perform_seek(),
                             timeout=app.conf.broker_request_timeout)
        if app.consumer_generation_id != generation_id:
            self.log.warning("Recovery rebalancing again during the seek")
            return
        self.completed.set()
        app.flow_control.resume()  # clears the queues: nothing of a stream partition is in them
        consumer.resume_partitions(stream_tps)
        consumer.resume_flow()
        await cast(Any, app)._fetcher.maybe_start()
        self.tables.on_actives_ready()
        if not app.assignor.assigned_standbys():
            self.tables.on_standbys_ready()
        app.on_rebalance_end()
        self.log.info("Worker ready")


class TableManager(FaustTableManager):
    """faust's table manager with :class:`OrderedRecovery`."""

    @property
    def recovery(self) -> Recovery:
        if self._recovery is None:
            self._recovery = OrderedRecovery(self.app, self, beacon=self.beacon,
                                             loop=self.loop)
        return self._recovery



def seek_uncommitted_to_beginning(consumer: Any, topics: set[str]) -> None:
    """Make ``consumer.seek_to_committed`` (used by faust's ``perform_seek``) also rewind the
    partitions of ``topics`` that have no committed offset to their beginning."""
    original = consumer.seek_to_committed

    async def seek_to_committed() -> Mapping[Any, int]:
        committed = await original()
        uncommitted = [tp for tp, offset in committed.items()
                       if tp.topic in topics and (offset is None or offset < 0)]
        if uncommitted:
            await consumer._thread.seek_to_beginning(*uncommitted)  # the aiokafka thread
        return committed

    consumer.seek_to_committed = seek_to_committed


def read_committed(consumer: Any) -> None:
    """Make faust's aiokafka consumer read with ``isolation_level="read_committed"``.

    faust picks ``read_uncommitted`` unless the app runs in its exactly-once mode, so the
    worker would act on records of the connector's transactions before they commit — and on
    those that abort. Must run before the consumer starts (it is created in its thread's
    ``on_start``)."""
    thread = consumer._thread
    original = thread._create_worker_consumer

    def create(transport: Any) -> Any:
        client = original(transport)
        client._isolation_level = "read_committed"  # read by AIOKafkaConsumer.start()
        return client

    thread._create_worker_consumer = create


class DropRewinder:
    """Seek back over records faust fetched and then dropped, for every topic.

    faust's ``Consumer.getmany`` silently drops records aiokafka has already handed over —
    all of them when the flow is stopped by the time the fetch returns (it then "seeks to
    committed", which does not move a changelog partition at all), those of a partition no
    longer active, the rest of a fetch when the generation changes. aiokafka's position is
    past them, so nothing fetches them again. For the requests topic the commit gate
    (:mod:`streams.commit_gate`) keeps that from losing an event; for a **changelog**
    partition it loses table entries during a restore. Seen once in the two-worker crash test
    (about 1 run in 25, before this): a survivor that took over a dead worker's partition
    lacked exactly the first 20 records (``max_poll_records``, one fetch) of a changelog
    partition, and decided those Orders' events again. The DEBUG logs of that run were not
    kept, so "the flow was stopped when that fetch returned" is the likely path, not a
    proven one.

    Installed with :func:`rewind_dropped_records`: it compares what each ``_getmany``
    returned with what ``getmany`` yielded and, before the next fetch, seeks every partition
    whose records were not all yielded back to the first one not yielded — only if its
    position is still past it (a seek by faust's recovery or ``perform_seek`` since wins).
    """

    def __init__(self, consumer: Any) -> None:
        self.consumer = consumer
        self.pending: dict[Any, int] = {}
        self.rewinds = 0
        self._fetched: dict[Any, list[int]] | None = None

    def fetched(self, records: Mapping[Any, Any]) -> None:
        self._fetched = {tp: [r.offset for r in recs] for tp, recs in records.items() if recs}

    def settle(self, yielded: Mapping[Any, set[int]]) -> None:
        fetched, self._fetched = self._fetched, None
        for tp, offsets in (fetched or {}).items():
            seen = yielded.get(tp, set())
            rest = [o for o in offsets if o not in seen]
            if rest:
                first = min(rest)
                self.pending[tp] = min(first, self.pending.get(tp, first))

    async def apply(self) -> None:
        if not self.pending:
            return
        pending, self.pending = self.pending, {}
        assignment = self.consumer.assignment()
        for tp, offset in sorted(pending.items()):
            if tp not in assignment:
                continue
            position = await self.consumer.position(tp)
            if position is None or position <= offset:
                continue
            self.rewinds += 1
            logging.getLogger(__name__).warning(
                "faust dropped fetched records of %s[%d] from offset %d; seeking back from %d",
                tp.topic, tp.partition, offset, position,
                extra={"partition": tp.partition, "offset": offset})
            await self.consumer.seek(tp, offset)


def rewind_dropped_records(consumer: Any) -> DropRewinder:
    """Install a :class:`DropRewinder` on faust's consumer (before its fetcher starts)."""
    rewinder = DropRewinder(consumer)
    original_fetch = consumer._getmany
    original_getmany = consumer.getmany

    async def _getmany(*args: Any, **kwargs: Any) -> Any:
        records = await original_fetch(*args, **kwargs)
        if records:
            rewinder.fetched(records)
        return records

    async def getmany(timeout: float) -> Any:
        await rewinder.apply()
        yielded: dict[Any, set[int]] = {}
        try:
            async for tp, message in original_getmany(timeout):
                yielded.setdefault(tp, set()).add(message.offset)
                yield tp, message
        finally:
            rewinder.settle(yielded)

    consumer._getmany = _getmany
    consumer.getmany = getmany
    return rewinder
