"""The one module that touches faust-streaming's and aiokafka's internals.

Everything the worker needs from the two libraries beyond their public API lives here; no
other module imports a private name of either (``tests/streams/test_faust_seam.py`` greps
for it). The versions it was written against are pinned exactly (:data:`PINNED`, and in
``pyproject.toml``); :func:`check_versions` refuses any other at start-up, and the contract
test fails when the source of a function wrapped, subclassed or relied on here changes
upstream (:data:`CONTRACT`: a hash of each). Why each workaround exists is in
``docs/decisions/``; each has a behaviour test.

The interface (what the rest of the worker calls):

* :func:`build_app` — the faust app with the recovery order, table placement and
  ``read_committed`` fixed; :class:`DurableTable` (``flush`` awaits the broker's acks);
  :class:`RecordWriter` (the tables' changelog records and the outcomes, straight into
  aiokafka's producer); :func:`key_partition`;
* :class:`ConsumerSeam` — on the app's consumer: :meth:`~ConsumerSeam.commit` explicit
  offsets (and drop faust's record of the offset gaps below them),
  :meth:`~ConsumerSeam.release` a message without committing it, seeks applied between fetches (:meth:`~ConsumerSeam.seek_before_next_fetch`), partitions paused for
  backpressure, the re-seek and diagnostics of the stall watchdog, and the revocation
  callback;
* :func:`watch_membership` — heartbeats, SyncGroup and rebalances of the consumer group,
  for the ownership lease (:mod:`streams.lease`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from functools import lru_cache, partial
from importlib import metadata
from pathlib import Path
from typing import Any, cast

import faust
from aiokafka import AIOKafkaProducer
from aiokafka.consumer.group_coordinator import CoordinatorGroupRebalance, GroupCoordinator
from aiokafka.partitioner import murmur2
from faust.stores.rocksdb import RocksDBOptions
from faust.stores.rocksdb import Store as RocksStore
from faust.tables.manager import TableManager as FaustTableManager
from faust.tables.recovery import Recovery
from faust.transport.base import Transport as FaustTransport
from faust.transport.consumer import Consumer as FaustConsumer
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread, ConsumerRebalanceListener
from faust.transport.drivers.aiokafka import Consumer as AIOKafkaDriverConsumer
from faust.transport.drivers.aiokafka import Producer as AIOKafkaDriverProducer
from faust.types import TP
from yarl import URL

from streams.state import DurabilityError

log = logging.getLogger(__name__)

PINNED = {"faust-streaming": "0.15.3", "aiokafka": "0.14.0"}


class UnsupportedVersion(RuntimeError):
    """faust-streaming or aiokafka is not the version this module was verified against."""


def check_versions() -> None:
    """Raise :class:`UnsupportedVersion` (one line) unless the pinned versions are installed."""
    wrong = []
    for dist, wanted in PINNED.items():
        try:
            found = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found = "not installed"
        if found != wanted:
            wrong.append(f"{dist} {found} (needs {wanted})")
    if wrong:
        raise UnsupportedVersion(
            "the worker patches library internals verified only for "
            + ", ".join(f"{d}=={v}" for d, v in PINNED.items()) + "; found "
            + ", ".join(wrong) + " (see streams/faust_seam.py)")


# upstream function → the sha256 (32 hex digits) of its source as verified. Wrapped (W),
# overridden in a subclass (S) or relied on for its behaviour (R).
CONTRACT: dict[str, tuple[Any, str, str]] = {
    "W aiokafka GroupCoordinator._do_heartbeat": (
        GroupCoordinator, "_do_heartbeat", "dc1d6632aaa68e964cf71958a17ebd8a"),
    "W aiokafka CoordinatorGroupRebalance._send_sync_group_request": (
        CoordinatorGroupRebalance, "_send_sync_group_request",
        "7429ca078ddf9bb7023fd095d118bd74"),
    "W faust ConsumerRebalanceListener.on_partitions_revoked": (
        ConsumerRebalanceListener, "on_partitions_revoked", "348c3aec879faf808e3ce86802ad8735"),
    "W faust ConsumerRebalanceListener.on_partitions_assigned": (
        ConsumerRebalanceListener, "on_partitions_assigned", "1c1f8406ad3698a6770a4ececb2f8074"),
    "R faust Consumer._clean_unacked_messages": (
        FaustConsumer, "_clean_unacked_messages", "11be2587e71c9162510ba634577e1da5"),
    "R faust Consumer.ack": (FaustConsumer, "ack", "5fcf41cf45153475de3790dc56fec1b8"),
}


def source_hash(owner: Any, attribute: str) -> str:
    """The first 32 hex digits of the sha256 of ``owner.attribute``'s upstream source."""
    fn = inspect.getattr_static(owner, attribute)
    fn = getattr(fn, "fget", fn)  # a property: its getter
    fn = getattr(fn, "__sfprov_original__", fn)
    return hashlib.sha256(inspect.getsource(fn).encode()).hexdigest()[:32]


def _wrap(owner: Any, attribute: str, make: Callable[[Any], Any]) -> None:
    original = getattr(owner, attribute)
    if getattr(original, "__sfprov_original__", None) is not None:
        return  # installed already
    wrapper = make(original)
    wrapper.__sfprov_original__ = original
    setattr(owner, attribute, wrapper)


@lru_cache(maxsize=4096)
def key_partition(key: str | bytes, partitions: int) -> int:
    """Kafka's default partition of ``key`` (Java/aiokafka/librdkafka ``murmur2``).
    Remembered for the last 4,096 keys: an Order's key is placed ~10 times per event (each
    table read and write), and aiokafka's murmur2 is pure Python."""
    raw = key.encode() if isinstance(key, str) else key
    return (murmur2(raw) & 0x7FFFFFFF) % partitions


# == group membership → the ownership lease (docs/decisions/0005) ==========================

class MembershipListener:
    """What the hooks report for one consumer group; called from the consumer's thread."""

    def heartbeat(self, generation: int, sent_at: float, *, accepted: bool,
                  rebalance: bool) -> None: ...

    def synced(self, generation: int, sent_at: float) -> None: ...

    def revoked(self) -> None: ...

    def assigned(self, partitions_by_topic: dict[str, set[int]], generation: int) -> None: ...


_listeners: dict[str, MembershipListener] = {}  # group id → listener


def watch_membership(group_id: str, listener: MembershipListener) -> None:
    """Report the membership of this process's consumer of ``group_id`` to ``listener``."""
    _install_membership_hooks()
    _listeners[group_id] = listener


def _install_membership_hooks() -> None:
    def heartbeat(original: Any) -> Any:
        async def _do_heartbeat(self: Any) -> Any:
            generation, sent_at = self.generation, time.monotonic()
            ok = await original(self)
            listener = _listeners.get(self.group_id)
            if listener is not None:
                # True also answers REBALANCE_IN_PROGRESS (aiokafka keeps heart-beating
                # through a rebalance): that is no renewal, and it ends the lease.
                rebalance = self._rejoin_needed_fut.done()
                listener.heartbeat(generation, sent_at, accepted=bool(ok) and not rebalance,
                                   rebalance=rebalance)
            return ok
        return _do_heartbeat

    def sync(original: Any) -> Any:
        async def _send_sync_group_request(self: Any, request: Any) -> Any:
            generation, sent_at = self._coordinator.generation, time.monotonic()
            assignment = await original(self, request)
            listener = _listeners.get(self.group_id)
            if assignment is not None and listener is not None:
                listener.synced(generation, sent_at)
            return assignment
        return _send_sync_group_request

    def revoked(original: Any) -> Any:
        def on_partitions_revoked(self: Any, revoked: Iterable[Any]) -> Any:
            listener = _listeners.get(str(self._thread.app.conf.id))
            if listener is not None:
                listener.revoked()  # before faust's callbacks: as early as possible
            return original(self, revoked)
        return on_partitions_revoked

    def assigned(original: Any) -> Any:
        async def on_partitions_assigned(self: Any, assigned: Iterable[Any]) -> None:
            listener = _listeners.get(str(self._thread.app.conf.id))
            assigned = list(assigned)
            if listener is not None:
                generation = self._thread._ensure_consumer()._coordinator.generation
                by_topic: dict[str, set[int]] = {}
                for tp in assigned:
                    by_topic.setdefault(tp.topic, set()).add(tp.partition)
                listener.assigned(by_topic, generation)
            await original(self, assigned)
        return on_partitions_assigned

    _wrap(GroupCoordinator, "_do_heartbeat", heartbeat)
    _wrap(CoordinatorGroupRebalance, "_send_sync_group_request", sync)
    _wrap(ConsumerRebalanceListener, "on_partitions_revoked", revoked)
    _wrap(ConsumerRebalanceListener, "on_partitions_assigned", assigned)


class LeaseAdapter(MembershipListener):
    """Feeds an :class:`~streams.lease.OwnershipLease` with the requests topic's partitions.

    A requests partition counts as owned only with the same partition of every table's
    changelog (``changelogs``): faust's assignor leaves out a changelog topic its metadata
    does not show yet ("Ignoring missing topic", seen on a 3-node cluster at start-up), and
    its table is then neither restored nor kept for that partition — the worker would decide
    the partition's events without the intents an earlier owner wrote, and send a second
    ``AddOrder``. Such partitions stay out of the lease (no WHMCS write) and ``unbacked`` is
    told (the worker exits so that a restart joins again, with the topic known)."""

    def __init__(self, lease: Any, topic: str, changelogs: Iterable[str] = (),
                 unbacked: Callable[[str], None] | None = None) -> None:
        self.lease, self.topic = lease, topic
        self.changelogs = tuple(changelogs)
        self.unbacked = unbacked or (lambda _reason: None)

    def heartbeat(self, generation: int, sent_at: float, *, accepted: bool,
                  rebalance: bool) -> None:
        self.lease.heartbeat(generation, sent_at, accepted=accepted, rebalance=rebalance)

    def synced(self, generation: int, sent_at: float) -> None:
        self.lease.synced(generation, sent_at)

    def revoked(self) -> None:
        self.lease.rebalancing()

    def assigned(self, partitions_by_topic: dict[str, set[int]], generation: int) -> None:
        owned = set(partitions_by_topic.get(self.topic, set()))
        gaps = {changelog: sorted(owned - partitions_by_topic.get(changelog, set()))
                for changelog in self.changelogs}
        gaps = {changelog: missing for changelog, missing in gaps.items() if missing}
        for missing in gaps.values():
            owned -= set(missing)
        self.lease.assigned(owned, generation)
        if gaps:
            self.unbacked(f"generation {generation} assigned requests partitions "
                          f"{sorted(partitions_by_topic.get(self.topic, set()))} without "
                          + ", ".join(f"{c} {m}" for c, m in gaps.items()))


# == tables (docs/decisions/0004) ==========================================================

_SHARED_CACHES: dict[int, Any] = {}  # size → the process's one rocksdict.Cache of that size
_SHARED_WRITE_BUFFERS: dict[int, Any] = {}  # size → the one rocksdict.WriteBufferManager


class BoundedRocksDBOptions(RocksDBOptions):
    """faust's rocksdict options, with every table file's index and bloom filter inside one
    block cache that all of the process's DBs share (``shared_block_cache_size`` bytes).

    faust keeps each file's whole index and filter in memory, outside its cache, for as long
    as the file exists; the tables keep every Order for ``WORKER_DEDUPE_TTL_DAYS``, so that
    memory grew with the Orders processed (~1.3 MB per 100,000 in a RocksDB-only run of the
    worker's four writes per Order, with easily compressed values). Here the index and the filter are partitioned
    (4 KB pieces, paged through the cache; only their top level, and level 0's, stay
    pinned), so the worker's RocksDB memory is its memtables plus this cache. Files written
    by faust's options are read as they are; compaction rewrites them in this format.

    ``shared_write_buffer_size`` (optional) bounds the memtables of all the DBs together
    (one ``WriteBufferManager``): each DB's own bound times the DBs (2 tables × partitions
    × ``max_write_buffer_number`` × ``write_buffer_size``) is what a worker taking over every
    partition would otherwise hold; past the shared bound the fullest memtable is flushed
    early (writes are never stalled).

    ``disable_wal``: no RocksDB write-ahead log (a ``write()`` per put, ~5 µs of the worker's
    ~8 puts per Order). The changelog topic is the tables' log, as in Kafka Streams, which
    turns RocksDB's off too: a crash loses what the memtables held, and with it the
    changelog offset written after those entries (:meth:`DurableTable.flush`), so the DB
    reopens as a consistent earlier state and faust's restore replays the changelog from
    that older offset. A clean close flushes the memtables first."""

    def __init__(self, *, shared_block_cache_size: int, shared_write_buffer_size: int = 0,
                 disable_wal: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.shared_block_cache_size = shared_block_cache_size
        self.shared_write_buffer_size = shared_write_buffer_size
        self.disable_wal = disable_wal

    def open(self, path: Path, *, read_only: bool = False) -> Any:
        """faust's ``open``, with these options named for the default column family too.
        Reopening an existing DB, rocksdict otherwise takes that family's options from the
        DB's OPTIONS file, and with them a new block cache per DB (12 × 8 MB, not one 8 MB:
        the sweep's first full scan filled them, +28 to +44 MB of worker RSS in
        ``bench.stages``). faust also sets the DB paths on options it then does not use;
        left out here, to the same effect."""
        import rocksdict

        options = self.as_options()
        access = (rocksdict.AccessType.read_write() if self.ttl is None
                  else rocksdict.AccessType.with_ttl(self.ttl))
        db = rocksdict.Rdict(str(path), options=options, column_families={"default": options},
                             access_type=access)
        db.set_read_options(rocksdict.ReadOptions())
        if self.disable_wal:
            writes = rocksdict.WriteOptions()
            writes.disable_wal = True  # type: ignore[method-assign,assignment]  # a property (stub: a method)
            db.set_write_options(writes)
        return db

    def as_options(self) -> Any:
        import rocksdict

        options = super().as_options()
        cache = _SHARED_CACHES.get(self.shared_block_cache_size)
        if cache is None:
            cache = _SHARED_CACHES[self.shared_block_cache_size] = rocksdict.Cache(
                self.shared_block_cache_size)
        table = rocksdict.BlockBasedOptions()
        table.set_block_cache(cache)
        table.set_bloom_filter(self.bloom_filter_size, False)
        table.set_cache_index_and_filter_blocks(True)
        table.set_pin_l0_filter_and_index_blocks_in_cache(True)
        table.set_index_type(rocksdict.BlockBasedIndexType.two_level_index_search())
        table.set_partition_filters(True)
        table.set_pin_top_level_index_and_filter(True)
        table.set_metadata_block_size(4096)
        table.set_format_version(5)
        options.set_block_based_table_factory(table)
        if self.shared_write_buffer_size:
            manager = _SHARED_WRITE_BUFFERS.get(self.shared_write_buffer_size)
            if manager is None:
                manager = _SHARED_WRITE_BUFFERS[self.shared_write_buffer_size] = \
                    rocksdict.WriteBufferManager(self.shared_write_buffer_size, False)
            options.set_write_buffer_manager(manager)
        return options


class KeyPartitionedRocksStore(RocksStore):
    """Files a key under its own partition's RocksDB, not the current event's, and reads,
    tests and deletes it there: one RocksDB lookup, where faust probes the bloom filter of
    every partition for a key it has not seen yet and keeps a locked LRU index of the keys
    it has (both were in the worker's profile, ``make bench``). Opened with
    :class:`BoundedRocksDBOptions` when the table's options name a
    ``shared_block_cache_size``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        faust_options = self.rocksdb_options
        shared = faust_options.extra_options.get("shared_block_cache_size")
        if shared and faust_options.use_rocksdict:
            self.rocksdb_options = BoundedRocksDBOptions(
                shared_block_cache_size=int(shared),
                shared_write_buffer_size=int(
                    faust_options.extra_options.get("shared_write_buffer_size") or 0),
                disable_wal=bool(faust_options.extra_options.get("disable_wal")),
                max_open_files=faust_options.max_open_files,
                write_buffer_size=faust_options.write_buffer_size,
                max_write_buffer_number=faust_options.max_write_buffer_number,
                target_file_size_base=faust_options.target_file_size_base,
                block_cache_size=faust_options.block_cache_size,
                bloom_filter_size=faust_options.bloom_filter_size,
                use_rocksdict=True, ttl=faust_options.ttl)

    def _db_for_key(self, key: bytes) -> Any:
        return self._db_for_partition(key_partition(key, self.table.partitions or 1))

    def memory(self) -> dict[str, int]:
        """Bytes held by this store's open DBs: memtables, and table readers (what of the
        files' indexes and filters lives outside the block cache). Call it on the event
        loop's thread, where faust opens and closes the DBs."""
        held = {"memtables": 0, "table_readers": 0}
        for db in list(self._dbs.values()):
            with contextlib.suppress(Exception):
                held["memtables"] += db.property_int_value("rocksdb.cur-size-all-mem-tables")
                held["table_readers"] += db.property_int_value(
                    "rocksdb.estimate-table-readers-mem")
        return held

    def _set(self, key: bytes, value: bytes | None) -> None:
        self._db_for_key(key).put(key, value)

    def _get(self, key: bytes) -> bytes | None:
        return cast("bytes | None", self._db_for_key(key).get(key))

    def _contains(self, key: bytes) -> bool:
        return self._db_for_key(key).get(key) is not None

    def _del(self, key: bytes) -> None:
        self._db_for_key(key).delete(key)


def rocksdb_memory(tables: Any) -> dict[str, int]:
    """Bytes RocksDB holds for ``tables``: memtables, table readers, and the shared block
    caches' usage (counted once: every DB shares it). Tables whose store is not open yet,
    or not RocksDB, count nothing."""
    held = {"memtables": 0, "table_readers": 0,
            "block_cache": sum(c.get_usage() for c in list(_SHARED_CACHES.values()))}
    for table in tables:
        store = table._data  # not .data: that would open a store, from a scrape
        if isinstance(store, KeyPartitionedRocksStore):
            for kind, size in store.memory().items():
                held[kind] += size
    return held


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


class DurableTable(faust.Table):
    """A table keyed by Order id whose changelog records go to the key's own partition,
    with raw UTF-8 keys, and whose writes can be awaited (:meth:`flush`).

    A write encodes its value once, puts it into the key's own partition's store and
    queues its changelog record on the app's :class:`RecordWriter` (faust encodes it twice
    and sends it through its producer buffer). ``watch(order_id, value)`` is told of every
    change, ours and those restored from the changelog (the sweep keeps an index of the
    few entries it must look at)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("use_partitioner", True)
        kwargs.setdefault("key_type", str)
        super().__init__(*args, **kwargs)
        self.key_serializer = "raw"  # faust derives JSON from key_type str: '"801..."'
        self._unflushed: list[asyncio.Future[Any]] = []
        self._acked: dict[int, int] = {}  # partition → highest changelog offset acknowledged
        self._writer = RecordWriter.for_app(self.app)
        self._changelog_name: str | None = None
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

    def read(self, key: str) -> Any | None:
        """The value under ``key``, or None: straight from the store (no sensors, no
        ``KeyError`` for the Orders the table has never seen)."""
        store = self.data
        if isinstance(store, RocksStore):
            raw = store._get(key.encode())
            return None if raw is None else store._decode_value(raw)
        return self.get(key)

    def __setitem__(self, key: Any, value: Any) -> None:
        store = self.data
        encoded = self._encode_value(value)
        self._changed(key, value, encoded)
        if isinstance(store, KeyPartitionedRocksStore):
            store._set(str(key).encode(), encoded)
        else:
            store[key] = value

    def __delitem__(self, key: Any) -> None:
        self.on_key_del(key)
        del self.data[key]

    def on_key_set(self, key: Any, value: Any) -> None:  # faust's update() and the like
        self._changed(key, value, self._encode_value(value))

    def on_key_del(self, key: Any) -> None:
        if self.watch is not None:
            self.watch(str(key), None)
        partition = cast(int, self.partition_for_key(key))
        self._send(partition, key, None)
        self._maybe_del_key_ttl(key, partition)
        self._sensor_on_del(self, key)

    def _encode_value(self, value: Any) -> bytes | None:
        return cast("bytes | None", self.app.serializers.dumps_value(
            self.value_type, value, serializer=self.value_serializer))

    def _changed(self, key: Any, value: Any, encoded: bytes | None) -> None:
        if self.watch is not None:
            self.watch(str(key), value)
        partition = cast(int, self.partition_for_key(key))
        self._send(partition, key, encoded)
        self._maybe_set_key_ttl(key, partition)
        self._sensor_on_set(self, key, value)

    def _send(self, partition: int, key: Any, encoded: bytes | None) -> None:
        name = self._changelog_name
        if name is None:
            name = self._changelog_name = self.changelog_topic.get_topic_name()
        fut = self._writer.send_soon(name, partition, str(key).encode(), encoded)
        fut.add_done_callback(partial(self._on_acked, partition))
        self._unflushed.append(fut)

    def _on_acked(self, partition: int, fut: asyncio.Future[Any]) -> None:
        if fut.cancelled() or fut.exception() is not None:
            return
        offset = fut.result().offset
        if offset > self._acked.get(partition, -1):
            self._acked[partition] = offset

    async def flush(self, timeout: float = 60.0) -> None:
        """Return once every change so far is acknowledged by the broker (``acks=all``),
        and record the changelog offsets the store now holds (faust reads the changelog
        from there when it restores; one write per partition and flush, where faust writes
        one per record — an older offset only means a longer restore).

        Raises :class:`DurabilityError` when a changelog record failed or timed out: the
        local table is then ahead of its changelog, and the only safe move is to stop the
        worker without acknowledging anything (a restart restores the tables)."""
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
        self._persist_offsets()

    def _persist_offsets(self) -> None:
        acked, self._acked = self._acked, {}
        store = self.data
        if not isinstance(store, RocksStore) or self._changelog_name is None:
            return
        for partition, offset in acked.items():
            if partition in store._dbs:  # a partition closed meanwhile: restored from older
                store.set_persisted_offset(TP(self._changelog_name, partition), offset)


# == the end of table recovery (docs/decisions/0001) =======================================

class OrderedRecovery(Recovery):
    """Seek the stream partitions while they are still paused, clear the agent queues, and
    only then resume: nothing fetched for a stream partition can be in a queue when faust
    clears the queues."""

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
        consumer.pause_partitions(stream_tps)
        if stream_tps:
            self.log.info("Seek stream partitions to committed offsets (still paused).")
            await self._wait(consumer.perform_seek(), timeout=app.conf.broker_request_timeout)
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


CONTRACT.update({
    "S faust Recovery.on_recovery_completed": (
        Recovery, "on_recovery_completed", "6ef567acf072e46da3fccbccc6d66237"),
    "S faust TableManager.recovery": (FaustTableManager, "recovery", "f0bf5de78b4c3d235c3554010480f407"),
    "S faust Table.on_key_set": (faust.Table, "on_key_set", "a370e35ca55c2c7e36e93f0d4b485927"),
    "S faust Table.on_key_del": (faust.Table, "on_key_del", "4f2900b2f9d24a080d5cbc9eaa1f5566"),
    # DurableTable writes: encoded once, the changelog record through RecordWriter (the
    # path faust's send_changelog / _on_changelog_sent took), the offset persisted per flush
    "S mode ManagedUserDict.__setitem__": (
        faust.Table, "__setitem__", "f3bdf602abc08dd1ace4cf2094d860f6"),
    "S mode ManagedUserDict.__delitem__": (
        faust.Table, "__delitem__", "c0ce7ef82dbd1255e2085ec37ba8944f"),
    "R faust Collection.send_changelog": (
        faust.Table, "send_changelog", "3dd3884e1b5fc0e1612bc688b83d9318"),
    "R faust Collection._on_changelog_sent": (
        faust.Table, "_on_changelog_sent", "60122c86a120d82cffa95da4c22323e1"),
    "R faust Collection._maybe_set_key_ttl": (
        faust.Table, "_maybe_set_key_ttl", "39b7465fa58038998e628bf0fa80d95b"),
    "R faust rocksdb Store.set_persisted_offset": (
        RocksStore, "set_persisted_offset", "b4c811926678346ebb8c40486dbc46d0"),
    "R faust Producer._ensure_producer": (
        AIOKafkaDriverProducer, "_ensure_producer", "5592a4bbdf2513253f98233a4eac931d"),
    "R aiokafka AIOKafkaProducer.send": (
        AIOKafkaProducer, "send", "08ce81263f43983815bb1056036c2498"),
    "S faust Collection.apply_changelog_batch": (
        faust.Table, "apply_changelog_batch", "b980a78d3ae9b1e87f2d3fb63e0dcd26"),
    "S faust Collection._new_store_by_url": (faust.Table, "_new_store_by_url", "343a8125107d3f69ced468ee15665995"),
    "S faust Collection.partition_for_key": (faust.Table, "partition_for_key", "3b2291811b8dd791cdd0e690b2b09d96"),
    "S faust rocksdb RocksDBOptions.as_options": (
        RocksDBOptions, "as_options", "d2a1bea17736d2eb2f8d2da592ef843f"),
    "S faust rocksdb RocksDBOptions.open": (
        RocksDBOptions, "open", "ff87e92d69e2f487e2657c1df266543f"),
    "R faust rocksdb Store.__init__": (RocksStore, "__init__", "c7c0fa2989e8ab4a4349ff29df825847"),
    # rocksdb_memory: the open DBs in Store._dbs, the store (if any) in Collection._data
    "R faust rocksdb Store._db_for_partition": (
        RocksStore, "_db_for_partition", "cb7e67d5f9efc4bced7b7ab09a55fe71"),
    "R faust Collection.data": (faust.Table, "data", "ade4a02ddd5582cb4264a7f927bf7a59"),
    "S faust rocksdb Store._set": (RocksStore, "_set", "4227e561e288d9413bf663a3a67940fd"),
    "S faust rocksdb Store._get": (RocksStore, "_get", "7ae8dfd6d7754a5952ae162d4d5cf0d5"),
    "S faust rocksdb Store._contains": (
        RocksStore, "_contains", "bd7d4e5252a71b9a5705677611435431"),
    "S faust rocksdb Store._del": (RocksStore, "_del", "07f42ff3caefffddb002ba3c316120ee"),
})


class IdempotentProducer(AIOKafkaDriverProducer):
    """faust's aiokafka producer with ``enable_idempotence``: faust asks for it only in its
    exactly-once mode, and ``acks=-1`` alone lets a send retried after a leader failover
    write a record twice (an outcome, or a changelog entry of the tables)."""

    def _settings_extra(self) -> Mapping[str, Any]:
        return {**super()._settings_extra(), "acks": "all", "enable_idempotence": True}


# mode names a service's logger after its class's module; keep faust's (quietened by
# common.log), or every start, stop and topic declaration lands in the worker's log at INFO.
IdempotentProducer.logger = AIOKafkaDriverProducer.logger


def build_app(app_id: str, **settings: Any) -> faust.App:
    """The worker's faust app: :class:`TableManager` (the recovery order), an idempotent
    producer, and its consumer reading ``read_committed`` (docs/decisions/0002)."""
    app = faust.App(app_id, TableManager="streams.faust_seam:TableManager", **settings)
    cast(Any, app.transport).Producer = IdempotentProducer  # before the producer exists
    thread = cast(Any, app.consumer)._thread
    original = thread._create_worker_consumer

    def create(transport: Any) -> Any:
        client = original(transport)
        client._isolation_level = "read_committed"  # read by AIOKafkaConsumer.start()
        return client

    thread._create_worker_consumer = create
    return app


# == the consumer (docs/decisions/0003, 0006) ==============================================

class ConsumerSeam:
    """What the worker does to faust's consumer of the requests topic.

    Fetching, in this order, before each of faust's fetches (one wrapper, so the order is
    fixed here): (1) seeks asked for by the checkpoint (records faust dropped that a commit
    would have passed), (2) seeks back over records faust fetched and dropped in the
    previous fetch, on any topic (a changelog restore too) — never moving a position
    forward. A partition that has no committed offset yet is "sought to committed" at its
    beginning, as ``auto.offset.reset=earliest`` means."""

    def __init__(self, app: faust.App, topic: str) -> None:
        self.app, self.topic = app, topic
        self.consumer: Any = app.consumer
        self.rewinds = 0
        self._pending_seeks: dict[int, int] = {}  # partition of ``topic`` → offset
        self._fetched: dict[Any, list[int]] | None = None
        self._rewind: dict[Any, int] = {}
        self._install_fetch()
        self._install_seek_to_committed()

    # -- fetching --------------------------------------------------------------------

    def seek_before_next_fetch(self, partition: int, offset: int) -> None:
        current = self._pending_seeks.get(partition)
        self._pending_seeks[partition] = offset if current is None else min(current, offset)

    def _install_fetch(self) -> None:
        consumer, seam = self.consumer, self
        original_fetch, original_getmany = consumer._getmany, consumer.getmany

        async def _getmany(*args: Any, **kwargs: Any) -> Any:
            records = await original_fetch(*args, **kwargs)
            if records:
                seam._fetched = {tp: [r.offset for r in recs] for tp, recs in records.items()
                                 if recs}
            return records

        async def getmany(timeout: float) -> Any:
            await seam._apply_seeks()
            yielded: dict[Any, set[int]] = {}
            try:
                async for tp, message in original_getmany(timeout):
                    yielded.setdefault(tp, set()).add(message.offset)
                    yield tp, message
            finally:
                seam._note_dropped(yielded)

        consumer._getmany = _getmany
        consumer.getmany = getmany

    def _note_dropped(self, yielded: Mapping[Any, set[int]]) -> None:
        fetched, self._fetched = self._fetched, None
        for tp, offsets in (fetched or {}).items():
            rest = [o for o in offsets if o not in yielded.get(tp, set())]
            if rest:
                self._rewind[tp] = min(min(rest), self._rewind.get(tp, min(rest)))

    async def _apply_seeks(self) -> None:
        assignment = self.consumer.assignment()
        seeks, self._pending_seeks = self._pending_seeks, {}
        for partition, offset in seeks.items():
            tp = next((t for t in assignment
                       if t.topic == self.topic and t.partition == partition), None)
            if tp is not None:
                await self.consumer.seek(tp, offset)
        rewind, self._rewind = self._rewind, {}
        for tp, offset in sorted(rewind.items()):
            if tp not in assignment:
                continue
            position = await self.consumer.position(tp)
            if position is None or position <= offset:
                continue  # a seek since (recovery, perform_seek, the checkpoint) wins
            self.rewinds += 1
            log.warning("faust dropped fetched records of %s[%d] from offset %d; seeking "
                        "back from %d", tp.topic, tp.partition, offset, position,
                        extra={"partition": tp.partition, "offset": offset})
            await self.consumer.seek(tp, offset)

    def _install_seek_to_committed(self) -> None:
        consumer, topic = self.consumer, self.topic
        original = consumer.seek_to_committed

        async def seek_to_committed() -> Mapping[Any, int]:
            committed = await original()
            uncommitted = [tp for tp, offset in committed.items()
                           if tp.topic == topic and (offset is None or offset < 0)]
            if uncommitted:
                await consumer._thread.seek_to_beginning(*uncommitted)
            return committed

        consumer.seek_to_committed = seek_to_committed

    # -- acknowledging and committing ----------------------------------------------------

    def release(self, message: Any) -> None:
        """Let faust forget ``message`` without counting it as processed: it no longer
        holds up a rebalance (``wait_empty``) and faust itself never commits past it —
        offsets of the requests topic are committed by the worker's checkpoint alone."""
        message.acked = True  # later acks of the message are no-ops (faust Message.ack)
        self.consumer._unacked_messages.discard(message)

    async def commit(self, offsets: Mapping[int, int]) -> bool:
        """Commit ``partition → offset`` of the requests topic (faust flushes its producer
        first, skips partitions no longer assigned, and records the commit)."""
        assignment = {tp.partition: tp for tp in self.consumer.assignment()
                      if tp.topic == self.topic}
        tps = {assignment[p]: o for p, o in offsets.items() if p in assignment}
        if not tps:
            return False
        committed = bool(await self.consumer._commit_offsets(tps))
        if committed:
            self._forget_gaps(tps)
        return committed

    def _forget_gaps(self, committed: Mapping[Any, int]) -> None:
        """Drop faust's record of the gaps in a partition's offsets below what was committed.

        faust notes every gap it reads past (each transaction's commit marker the connector
        writes is one) to fill it in when it commits from its own acks — and only there
        does it chop them (``Consumer._new_offset``). The requests topic is committed by the
        checkpoint instead, so the gaps stayed: one interval per connector transaction for
        the life of the worker (tracemalloc: ~580 intervals per 15,000 Orders), and faust rebuilds the whole interval tree at every new gap
        (``merge_overlaps``), a cost that grew with it."""
        gaps = self.consumer._gap
        for tp, offset in committed.items():
            tree = gaps.get(tp)
            if tree:
                tree.chop(0, offset)

    def offset_gaps(self) -> int:
        """The gaps faust tracks in the requests partitions' offsets (/readyz): a handful at
        most, those above the last commit."""
        return sum(len(tree) for tp, tree in list(self.consumer._gap.items())
                   if tp.topic == self.topic)

    def before_wait_empty(self, callback: Callable[[bool], Awaitable[None]]) -> None:
        """``await callback(stopping)`` whenever faust is about to wait for unacknowledged
        messages: in a rebalance (every partition is revoked: eager protocol) or when the
        worker stops — so the worker can finish or release its events first."""
        consumer, app = self.consumer, self.app
        original = consumer.wait_empty

        async def wait_empty() -> None:
            await callback(bool(app.should_stop))
            await original()

        consumer.wait_empty = wait_empty

    def pause(self, partitions: Iterable[int]) -> None:
        self.consumer.pause_partitions(self._tps(partitions))

    def resume(self, partitions: Iterable[int]) -> None:
        self.consumer.resume_partitions(self._tps(partitions))

    def _tps(self, partitions: Iterable[int]) -> list[Any]:
        wanted = set(partitions)
        return [tp for tp in self.consumer.assignment()
                if tp.topic == self.topic and tp.partition in wanted]

    def assigned_partitions(self) -> set[int]:
        """The requests partitions this worker actively owns (not standbys)."""
        try:
            actives = self.app.assignor.assigned_actives()
        except Exception:  # noqa: BLE001 - before the first assignment
            return set()
        return {tp.partition for tp in actives if tp.topic == self.topic}

    # -- the stall watchdog (from its own thread) ----------------------------------------

    def reseek(self) -> None:
        """Seek the stream partitions back to their committed offsets (thread-safe)."""
        if self.app.rebalancing:
            return  # a rebalance seeks by itself when (if) it completes
        future = asyncio.run_coroutine_threadsafe(self.consumer.perform_seek(), self.app.loop)
        future.result(timeout=30)

    def recovery_position(self) -> int:
        try:
            recovery = cast(Any, self.app.tables).recovery
            return int(sum(recovery.active_offsets.values()))
        except Exception:  # noqa: BLE001 - read from another thread; best effort
            return 0

    def diagnose(self) -> dict[str, Any]:
        """faust's gates between the broker and the agent, read as they are."""
        app, consumer, topic = cast(Any, self.app), self.consumer, self.topic
        probes = {
            "flow_active": lambda: consumer.flow_active,
            "flow_control_active": lambda: app.flow_control.is_active(),
            "rebalancing": lambda: app.rebalancing,
            "recovery_completed": lambda: app.tables.recovery.completed.is_set(),
            "active_partitions": lambda: sorted(
                tp.partition for tp in (consumer._active_partitions or ())
                if tp.topic == topic),
            "paused_partitions": lambda: sorted(
                tp.partition for tp in consumer._paused_partitions if tp.topic == topic),
            "read_offsets": lambda: {tp.partition: off for tp, off
                                     in consumer._read_offset.items() if tp.topic == topic},
            "unacked_messages": lambda: len(consumer._unacked_messages),
        }
        out: dict[str, Any] = {}
        for name, probe in probes.items():
            try:
                out[name] = probe()
            except Exception as exc:  # noqa: BLE001 - diagnostics only
                out[name] = f"? {type(exc).__name__}"
        return out


CONTRACT.update({
    "W faust Consumer._getmany": (AIOKafkaDriverConsumer, "_getmany", "f9d47aa9010b5ff2b874ba65f927871f"),
    "W faust Consumer.getmany": (AIOKafkaDriverConsumer, "getmany", "4b168d84882a70d6e3e2f9804430a63b"),
    "W faust Consumer.seek_to_committed": (AIOKafkaDriverConsumer, "seek_to_committed", "f1d483b861b0328b4f0be90a4abc3f95"),
    "W faust AIOKafkaConsumerThread._create_worker_consumer": (
        AIOKafkaConsumerThread, "_create_worker_consumer", "c2701bfc3e6f6cad95c2be36d6a255a8"),
    "R faust Consumer._commit_offsets": (
        AIOKafkaDriverConsumer, "_commit_offsets", "1a6979904118844111259d182ca1c6e9"),
    "R faust Consumer.wait_empty": (AIOKafkaDriverConsumer, "wait_empty", "e4662fe24f094819add590b2d75f2338"),
    "R faust Consumer._add_gap": (FaustConsumer, "_add_gap", "4df2573ded7c1c2cde04dc6bde6d4480"),
    "R faust Consumer._new_offset": (
        FaustConsumer, "_new_offset", "1d2c7ea89a7ad4f1a216c1d51936e569"),
    "S faust aiokafka Producer._settings_extra": (
        AIOKafkaDriverProducer, "_settings_extra", "a4c7bc41b63822236e4c9be1c49437d0"),
    "R faust Transport.create_producer": (
        FaustTransport, "create_producer", "2de47ba78c944b4a74a3aadb0af9fea9"),
})
