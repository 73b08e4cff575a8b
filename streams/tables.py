"""Faust tables keyed by Salesforce Order id, co-partitioned with the requests topic, durable
on demand.

Why a :class:`Table` subclass (verified against faust-streaming 0.15.3's source):

* **Partition of a changelog record.** By default faust writes a table change to the
  partition of the *current event* (``Collection.partition_for_key``), which inside a
  ``take()`` batch is whichever event came last — wrong for every other Order of the batch.
  ``use_partitioner=True`` instead hashes the key with the producer's partitioner, but
  through ``eager_partitioning`` it needs the producer's metadata for the changelog topic
  (absent before the first send: ``list(None)``). :meth:`DurableTable.partition_for_key`
  therefore computes the same thing directly: Kafka's murmur2 of the UTF-8 key, positive,
  modulo the table's partitions — what the connector's librdkafka ``murmur2_random``, Java
  and aiokafka all compute — so an Order's table entries live in the partition of its
  requests and move with them on a rebalance. It needs no current event, so timers can
  write too.
* **RocksDB placement.** faust's RocksDB store ``_set`` puts a key into the DB of the
  *current event's* partition; :class:`KeyPartitionedRocksStore` puts it into the DB of the
  key's partition, so a revoked partition takes its keys with it.
* **Key bytes.** faust picks the changelog key codec from ``key_type`` (``str`` → JSON,
  i.e. ``"801..."`` with quotes), whatever the schema says; the keys are forced to raw
  UTF-8 so every component hashes the same bytes.
* **Durability.** ``table[key] = value`` only queues the changelog record (``send_soon``
  into the producer buffer) and drops the future. :class:`DurableTable` keeps those futures;
  :meth:`DurableTable.flush` awaits them all, i.e. returns once the broker acknowledged
  (``acks=all``) every change made so far. One flush per batch step, not per Order.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, MutableMapping
from typing import Any, cast

import faust
from aiokafka.partitioner import murmur2
from faust.stores.rocksdb import Store as RocksStore
from yarl import URL

from common.errors import KafkaError


def key_partition(key: str | bytes, partitions: int) -> int:
    """Kafka's default partition of ``key`` (Java/aiokafka/librdkafka murmur2)."""
    raw = key.encode() if isinstance(key, str) else key
    return (murmur2(raw) & 0x7FFFFFFF) % partitions


class DurabilityError(KafkaError):
    """A table change could not be made durable; the worker must stop without acking."""


class KeyPartitionedRocksStore(RocksStore):
    """RocksDB store that files a key under its own partition, not the current event's."""

    def _set(self, key: bytes, value: bytes | None) -> None:
        partition = key_partition(key, self.table.partitions or 1)
        db = self._db_for_partition(partition)
        self._key_index[key] = partition
        db.put(key, value)


class DurableTable(faust.Table):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("use_partitioner", True)
        kwargs.setdefault("key_type", str)
        super().__init__(*args, **kwargs)
        # faust derives the key codec from key_type (str → json: '"801..."'), ignoring the
        # schema's; raw UTF-8 keys are what the connector hashes, so the changelog, the
        # RocksDB placement and operators' tools all see the plain Order id.
        self.key_serializer = "raw"
        self._unflushed: list[asyncio.Future] = []
        # Told of every change (ours and those restored from the changelog): lets the sweep
        # keep an index of the few entries it must look at instead of scanning the table.
        self.watch: Callable[[str, Any], None] | None = None

    def apply_changelog_batch(self, batch: Any) -> None:
        batch = list(batch)
        super().apply_changelog_batch(batch)
        if self.watch is not None:
            for event in batch:
                key, value = event.message.key, event.message.value
                oid = key.decode() if isinstance(key, bytes) else str(key)
                self.watch(oid, json.loads(value) if value is not None else None)

    def _new_store_by_url(self, url: str | URL) -> Any:
        if URL(str(url)).scheme == "rocksdb":
            return KeyPartitionedRocksStore(
                url, self.app, self, table_name=self.name, key_type=self.key_type,
                key_serializer=self.key_serializer, value_serializer=self.value_serializer,
                value_type=self.value_type, loop=self.loop, options=self.options)
        return super()._new_store_by_url(url)

    def partition_for_key(self, key: Any) -> int | None:
        return key_partition(str(key), self.partitions or 1)

    def on_key_set(self, key: Any, value: Any) -> None:
        if self.watch is not None:
            self.watch(str(key), value)
        fut = self.send_changelog(self.partition_for_key(key), key, value)
        self._unflushed.append(fut)
        self._maybe_set_key_ttl(key, cast(int, fut.message.partition))
        self._sensor_on_set(self, key, value)

    def on_key_del(self, key: Any) -> None:
        if self.watch is not None:
            self.watch(str(key), None)
        fut = self.send_changelog(self.partition_for_key(key), key, value=None,
                                  value_serializer="raw")
        self._unflushed.append(fut)
        self._maybe_del_key_ttl(key, cast(int, fut.message.partition))
        self._sensor_on_del(self, key)

    async def flush(self, timeout: float = 60.0) -> None:
        """Wait until every change so far is acknowledged by the broker.

        Raises :class:`DurabilityError` when a changelog record failed or timed out: the
        local table is then ahead of its changelog, and the only safe move is to stop the
        worker without acknowledging the batch (restart restores the tables from the
        changelog and the events are redelivered).
        """
        pending, self._unflushed = self._unflushed, []
        if not pending:
            return
        try:
            await asyncio.wait_for(asyncio.gather(*pending), timeout)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise DurabilityError(f"table {self.name}: changelog write not acknowledged: "
                                  f"{exc!r}") from exc

    def local_items(self) -> list[tuple[str, Any]]:
        return list(self.items())


class TableState:
    """The :class:`streams.batch.StateStore` over the two Faust tables."""

    def __init__(self, idem: DurableTable, intents: DurableTable) -> None:
        # faust's tables are mutable mappings at run time (ManagedUserDict); their stubs
        # do not say so
        self.idem: MutableMapping[str, Any] = cast(MutableMapping[str, Any], idem)
        self.intents: MutableMapping[str, Any] = cast(MutableMapping[str, Any], intents)
        self._tables = (idem, intents)
        self.flushes = 0
        self.watched = True  # DurableTable.watch reports every change to the sweep

    async def flush(self) -> None:
        self.flushes += 1
        await asyncio.gather(*(table.flush() for table in self._tables))
