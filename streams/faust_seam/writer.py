"""The worker's records straight into the app's aiokafka producer: the tables' changelog
entries and the outcomes, in the order they were written (docs/decisions/0004)."""

from __future__ import annotations

import asyncio
import copy
from collections import deque
from functools import partial
from typing import Any, cast

import faust
from aiokafka import AIOKafkaProducer
from aiokafka.producer.message_accumulator import (
    BatchBuilder,
    MessageAccumulator,
    MessageBatch,
)
from faust.transport.drivers.aiokafka import Producer as AIOKafkaDriverProducer

from streams.faust_seam._base import CONTRACT, key_partition
from streams.state import DurabilityError


class Tally:
    """Many records' results as one (a table's writes between two flushes): ``done``
    resolves once :meth:`close` was called and every record counted in is acknowledged, or
    fails with the first record's error; ``acked`` holds each partition's highest
    acknowledged offset, ``lowest`` its lowest and ``offsets`` the acknowledged offsets
    themselves (whether they are one unbroken run: :meth:`contiguous`; which records are
    ours where another writer's landed among them, decision 0016). Where a future per record
    cost a future, a done-callback and a ``gather`` entry, and two callbacks run by the loop
    at the acknowledgement, a record here costs a list entry."""

    __slots__ = ("pending", "acked", "lowest", "offsets", "done", "closed", "generation")

    def __init__(self, loop: asyncio.AbstractEventLoop, generation: int | None = None) -> None:
        self.generation = generation  # the group generation its first record was written in
        self.pending = 0
        self.acked: dict[int, int] = {}
        self.lowest: dict[int, int] = {}
        self.offsets: dict[int, list[int]] = {}
        self.done: asyncio.Future[None] = loop.create_future()
        self.closed = False

    def ack(self, partition: int, offset: int) -> None:
        self.pending -= 1
        if offset > self.acked.get(partition, -1):
            self.acked[partition] = offset
        if offset < self.lowest.get(partition, offset + 1):
            self.lowest[partition] = offset
        mine = self.offsets.get(partition)
        if mine is None:
            mine = self.offsets[partition] = []
        mine.append(offset)
        if not self.pending and self.closed and not self.done.done():
            self.done.set_result(None)

    def fail(self, error: BaseException) -> None:
        self.pending -= 1
        if not self.done.done():
            self.done.set_exception(error)

    def contiguous(self, partition: int, after: int) -> bool:
        """The records acknowledged in ``partition`` are exactly the offsets right after
        ``after``: nobody else wrote to the partition in between or among them."""
        lowest = self.lowest.get(partition)
        return lowest == after + 1 and \
            len(self.offsets[partition]) == self.acked[partition] - lowest + 1

    def close(self) -> None:
        """No more records: ``done`` resolves once those counted in are acknowledged."""
        self.closed = True
        if not self.pending and not self.done.done():
            self.done.set_result(None)


# topic, partition (None: by key), key, value, headers, the record's result (its own future,
# or the tally it is counted in)
_Entry = tuple[str, int | None, bytes | None, bytes | None, list[tuple[str, bytes]] | None,
               asyncio.Future[Any] | Tally]


def _fail(result: asyncio.Future[Any] | Tally, error: BaseException) -> None:
    if isinstance(result, Tally):
        result.fail(error)
    elif not result.done():
        result.set_exception(error)


class RecordWriter:
    """The worker's records straight into the app's aiokafka producer: the tables'
    changelog entries and the outcomes, in the order they were written, by one task that
    drains them all each time it runs.

    faust sends a table change through its producer buffer: a ``FutureMessage``, a queue
    put and a task wake-up, ``publish_message`` with its sensors, and an acknowledgement
    callback that writes the changelog offset into RocksDB — per record, ~5 records per
    Order. Here a record is a tuple in a deque and one future (an outcome), or one count in
    its table's :class:`Tally` (a changelog entry: the table waits for all its writes at
    once); the changelog offsets are persisted once per flush (:meth:`DurableTable.flush`).
    One writer per app (:meth:`for_app`), so each partition's records keep the order they
    were written in.

    Each drain takes every record queued so far and hands them to aiokafka as one batch per
    partition (``create_batch`` / ``send_batch``), where ``AIOKafkaProducer.send`` would
    cost a coroutine, a partitioner call, an accumulator append and a future per record;
    aiokafka then sends the batches as it sends its own (the same produce requests,
    idempotence and ``acks``). A record's result is its batch's, its offset the batch's
    base offset plus its place in it. A record without a partition goes to its key's
    partition (aiokafka's default partitioner: murmur2 of the key over all the topic's
    partitions); one without a key either goes through ``AIOKafkaProducer.send``."""

    def __init__(self, app: faust.App) -> None:
        self.app = app
        self._queue: deque[_Entry] = deque()
        self._draining = False
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def for_app(cls, app: Any) -> RecordWriter:
        writer = getattr(app, "_sfprov_record_writer", None)
        if writer is None:
            writer = cls(app)
            setattr(app, "_sfprov_record_writer", writer)  # noqa: B010 - not a faust field
        return cast(RecordWriter, writer)

    def send_soon(self, topic: str, partition: int | None, key: bytes | None,
                  value: bytes | None, headers: list[tuple[str, bytes]] | None = None
                  ) -> asyncio.Future[Any]:
        """Queue one record; the future resolves to its ``RecordMetadata`` once the broker
        acknowledged it (``acks=all``), or to the error. ``partition`` None: the key's
        partition (murmur2, as aiokafka's default partitioner and faust's topics)."""
        loop = asyncio.get_running_loop()
        result: asyncio.Future[Any] = loop.create_future()
        self._queue.append((topic, partition, key, value, headers, result))
        if not self._draining:
            self._draining = True
            self._task = loop.create_task(self._drain())  # referenced: not collected
        return result

    def send_counted(self, topic: str, partition: int, key: bytes, value: bytes | None,
                     tally: Tally, headers: list[tuple[str, bytes]] | None = None) -> None:
        """Queue one record whose result is counted in ``tally`` (its ``pending`` raised
        here) instead of a future of its own."""
        tally.pending += 1
        self._queue.append((topic, partition, key, value, headers, tally))
        if not self._draining:
            self._draining = True
            self._task = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        queue = self._queue
        # Out of the queue and not yet handed to the producer (each list loses its entries
        # as they are handed over): failed with DurabilityError if the drain is cut short.
        left: list[deque[_Entry] | list[_Entry]] = []
        try:
            producer = cast(Any, self.app.producer)._ensure_producer()
            while queue:
                taken, self._queue = queue, deque()
                queue = self._queue
                left = [taken]
                groups: dict[tuple[str, int | None], list[_Entry]] = {}
                counts: dict[str, int] = {}  # topic → its partitions (the current metadata)
                while taken:
                    topic, partition, key = taken[0][:3]
                    if partition is None and key is not None:
                        count = counts.get(topic)
                        if count is None:
                            count = counts[topic] = len(await producer.partitions_for(topic))
                        partition = key_partition(key, count)
                    group = groups.get((topic, partition))
                    if group is None:
                        group = groups[(topic, partition)] = []
                        left.append(group)
                    group.append(taken.popleft())
                for (topic, partition), entries in groups.items():
                    if partition is None:  # no partition and no key: aiokafka picks one
                        while entries:
                            await self._send_one(producer, entries[0])
                            del entries[0]
                    else:
                        await self._send_group(producer, topic, partition, entries)
                left = []
        except BaseException as exc:  # noqa: BLE001 - no producer, or stopping
            for entry in (*(e for entries in left for e in entries), *queue):
                _fail(entry[5], DurabilityError(f"record not sent: {exc!r}"))
            queue.clear()
            if not isinstance(exc, Exception):
                raise
        finally:
            self._draining = False
            self._task = None

    async def _send_group(self, producer: Any, topic: str, partition: int,
                          entries: list[_Entry]) -> None:
        """``entries`` (one partition's, in order) as one batch, or more when they do not
        fit one (``max_batch_size``; a first record always fits). Each entry leaves
        ``entries`` once its batch is handed to the producer (or failed on its own)."""
        while entries:
            builder = producer.create_batch()
            chunk: list[tuple[asyncio.Future[Any] | Tally, int]] = []
            for _t, _p, key, value, headers, result in entries:
                meta = builder.append(timestamp=None, key=key, value=value,
                                      headers=headers or [])
                if meta is None:
                    break
                chunk.append((result, meta.offset))
            if not chunk:  # cannot be (a batch takes its first record whatever its size)
                raise DurabilityError(f"aiokafka refused a record of {topic} as a batch")
            try:
                sent = await producer.send_batch(builder, topic, partition=partition)
            except Exception as exc:  # noqa: BLE001 - the batch's own failure (a timeout)
                for result, _offset in chunk:
                    _fail(result, copy.copy(exc))
            else:
                sent.add_done_callback(partial(_resolve_batch, partition, chunk))
            del entries[:len(chunk)]

    @staticmethod
    async def _send_one(producer: Any, entry: _Entry) -> None:
        topic, partition, key, value, headers, result = entry
        try:
            sent = await producer.send(topic, value, key=key, partition=partition,
                                       headers=headers)
        except Exception as exc:  # noqa: BLE001 - the record's own failure
            _fail(result, exc)
            return
        # its own offset; a record without a partition is never counted in a tally
        sent.add_done_callback(partial(_resolve_batch, -1, [(result, 0)]))


def _resolve_batch(partition: int, chunk: list[tuple[asyncio.Future[Any] | Tally, int]],
                   sent: asyncio.Future[Any]) -> None:
    """The batch (or the one record ``send`` took) was acknowledged, or failed: each record's
    result, its offset the batch's base offset plus its own place in the batch."""
    if sent.cancelled():
        error: BaseException = DurabilityError("record send cancelled")
    elif sent.exception() is not None:
        error = cast(BaseException, sent.exception())
    else:
        base = sent.result()
        first = base.offset
        for result, offset in chunk:
            if isinstance(result, Tally):
                result.ack(partition, first + offset)
            elif not result.done():
                result.set_result(base._replace(offset=first + offset))
        return
    for result, _offset in chunk:
        _fail(result, copy.copy(error))


CONTRACT.update({
    "R faust Producer._ensure_producer": (
        AIOKafkaDriverProducer, "_ensure_producer", "5592a4bbdf2513253f98233a4eac931d"),
    "R aiokafka AIOKafkaProducer.send": (
        AIOKafkaProducer, "send", "08ce81263f43983815bb1056036c2498"),
    "R aiokafka AIOKafkaProducer.create_batch": (
        AIOKafkaProducer, "create_batch", "c4efda4bb7a09741e168138a54cdeeef"),
    "R aiokafka AIOKafkaProducer.send_batch": (
        AIOKafkaProducer, "send_batch", "bf42b0f0c5c0646db4cc15b54a81103f"),
    # _resolve_batch: send_batch's future is the batch's (add_batch), resolved to the
    # batch's base offset (done); a record's offset is that plus its place in the batch
    "R aiokafka MessageAccumulator.add_batch": (
        MessageAccumulator, "add_batch", "5ed1c5b1367ad85413d82f5704ed1165"),
    "R aiokafka MessageBatch.done (the batch future: its base offset)": (
        MessageBatch, "done", "2d765e5c2dc8638ddf995f5f35484a7e"),
    # _send_group: the metadata append returns is the record's place in the batch (offset,
    # from 0), None once the batch is full (the rest go in the next batch)
    "R aiokafka BatchBuilder.append": (
        BatchBuilder, "append", "657d76f55157d9cac2981d5e76453c68"),
    # _drain: a keyed record without a partition goes to murmur2 of its key over the
    # topic's partitions as the producer's metadata has them
    "R aiokafka AIOKafkaProducer.partitions_for": (
        AIOKafkaProducer, "partitions_for", "0d526b6cfcfdfc00be39e2d9f39431ef"),
})
