"""The worker's records straight into the app's aiokafka producer: the tables' changelog
entries and the outcomes, in the order they were written (docs/decisions/0004)."""

from __future__ import annotations

import asyncio
from collections import deque
from functools import partial
from typing import Any, cast

import faust
from aiokafka import AIOKafkaProducer
from faust.transport.drivers.aiokafka import Producer as AIOKafkaDriverProducer

from streams.faust_seam._base import CONTRACT
from streams.state import DurabilityError


class RecordWriter:
    """The worker's records straight into the app's aiokafka producer: the tables'
    changelog entries and the outcomes, in the order they were written, by one task that
    drains them all each time it runs.

    faust sends a table change through its producer buffer: a ``FutureMessage``, a queue
    put and a task wake-up, ``publish_message`` with its sensors, and an acknowledgement
    callback that writes the changelog offset into RocksDB — per record, ~5 records per
    Order. Here a record is a tuple in a deque and one future; the changelog offsets are
    persisted once per flush (:meth:`DurableTable.flush`). One writer per app
    (:meth:`for_app`), so records keep the order they were written in across tables."""

    def __init__(self, app: faust.App) -> None:
        self.app = app
        self._queue: deque[tuple[str, int | None, bytes | None, bytes | None,
                                 list[tuple[str, bytes]] | None,
                                 asyncio.Future[Any]]] = deque()
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
        acknowledged it (``acks=all``), or to the error. ``partition`` None: the
        producer's partitioner (murmur2 of the key, as faust's topics)."""
        loop = asyncio.get_running_loop()
        result: asyncio.Future[Any] = loop.create_future()
        self._queue.append((topic, partition, key, value, headers, result))
        if not self._draining:
            self._draining = True
            self._task = loop.create_task(self._drain())  # referenced: not collected
        return result

    async def _drain(self) -> None:
        queue = self._queue
        try:
            producer = cast(Any, self.app.producer)._ensure_producer()
            while queue:
                topic, partition, key, value, headers, result = queue.popleft()
                try:
                    sent = await producer.send(topic, value, key=key, partition=partition,
                                               headers=headers)
                except asyncio.CancelledError:
                    result.cancel()
                    raise
                except Exception as exc:  # noqa: BLE001 - the record's own failure
                    if not result.done():
                        result.set_exception(exc)
                    continue
                sent.add_done_callback(partial(_resolve, result))
        except BaseException as exc:  # noqa: BLE001 - no producer, or stopping
            while queue:
                result = queue.popleft()[-1]
                if not result.done():
                    result.set_exception(DurabilityError(f"record not sent: {exc!r}"))
            if not isinstance(exc, Exception):
                raise
        finally:
            self._draining = False
            self._task = None


def _resolve(result: asyncio.Future[Any], sent: asyncio.Future[Any]) -> None:
    if result.done():
        return
    if sent.cancelled():
        result.set_exception(DurabilityError("record send cancelled"))
    elif sent.exception() is not None:
        result.set_exception(cast(BaseException, sent.exception()))
    else:
        result.set_result(sent.result())


CONTRACT.update({
    "R faust Producer._ensure_producer": (
        AIOKafkaDriverProducer, "_ensure_producer", "5592a4bbdf2513253f98233a4eac931d"),
    "R aiokafka AIOKafkaProducer.send": (
        AIOKafkaProducer, "send", "08ce81263f43983815bb1056036c2498"),
})
