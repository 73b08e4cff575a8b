"""The tables: RocksDB sized and shared, keys in their own partition, writes straight into the
producer (:mod:`streams.faust_seam.writer`) and awaitable (docs/decisions/0004)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import Any, cast

import faust
import orjson
from faust.stores.rocksdb import RocksDBOptions
from faust.stores.rocksdb import Store as RocksStore
from faust.types import TP
from yarl import URL

from streams import metrics
from streams.faust_seam._base import CONTRACT, key_partition
from streams.faust_seam.writer import RecordWriter, Tally
from streams.state import DurabilityError

log = logging.getLogger(__name__)

# faust.utils.json.dumps's options when orjson is installed (without its ``default`` hook)
_FAUST_ORJSON = orjson.OPT_NON_STR_KEYS | orjson.OPT_UTC_Z
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
        self._unflushed: Tally | None = None  # the writes since the last flush
        self._writer = RecordWriter.for_app(self.app)
        self._changelog_name: str | None = None
        self.watch: Callable[[str, Any], None] | None = None
        self._gapped: set[int] = set()  # partitions whose persisted offset a gap holds back
        # Another writer's records among this table's own (streams.repair): told of each
        # flush whose records do not follow the last one's, with the offsets to look at
        # and the group generation its first record was written in (``generation``);
        # answers True when they are an earlier owner's late records (this worker owned
        # the partition throughout): the persisted offset may then move past them.
        self.on_foreign: Callable[[DurableTable, int, int, int, int | None], bool] | None = None
        self.generation: Callable[[], int | None] | None = None
        self._tail: dict[int, int] = {}  # partition → offset of the last record looked at
        self._tail_generation: dict[int, int | None] = {}  # ... and its flush's generation
        self._flushing = 0  # flushes awaiting their acknowledgements

    def apply_changelog_batch(self, batch: Any) -> None:
        batch = list(batch)
        super().apply_changelog_batch(batch)
        if self.watch is not None:
            for event in batch:
                key, value = event.message.key, event.message.value
                oid = key.decode() if isinstance(key, bytes) else str(key)
                self.watch(oid, orjson.loads(value) if value is not None else None)

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
            if raw is None:
                return None
            return orjson.loads(raw) if self._json_values else store._decode_value(raw)
        return self.get(key)

    def stored(self, key: str) -> bytes | None:
        """The bytes the store holds under ``key`` (what its changelog record carries)."""
        store = self.data
        if isinstance(store, RocksStore):
            return cast("bytes | None", store._get(key.encode()))
        return self._encode_value(self.get(key)) if key in store else None

    def rewrite(self, key: str) -> None:
        """Send ``key``'s stored value again (a tombstone when there is none), so that the
        changelog's last record for it is this table's again: another writer's record landed
        after ours (streams.repair). The store is unchanged; the next flush makes it
        durable."""
        self._send(cast(int, self.partition_for_key(key)), key, self.stored(key))

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
        """JSON bytes for the value, as faust's JSON codec writes them. A plain dict goes
        straight to orjson (the registry's codec chain around it was ~4 % of the worker's
        profile samples; orjson encodes a table value in 0.5 µs where the standard library
        takes 6; faust's codec uses orjson too once it is installed); anything else, or a
        type only faust's encoder knows (datetime, Decimal, UUID), through faust's
        registry. :meth:`read` decodes the same way, straight from the store."""
        if type(value) is dict and self._json_values:
            try:
                return orjson.dumps(value, option=_FAUST_ORJSON)
            except TypeError:  # orjson.JSONEncodeError: e.g. a Decimal, an int past 64 bits
                pass
        return cast("bytes | None", self.app.serializers.dumps_value(
            self.value_type, value, serializer=self.value_serializer))

    @cached_property
    def _json_values(self) -> bool:
        serializer = self.value_serializer or self.app.conf.value_serializer
        return serializer == "json" and self.value_type in (None, Any, dict)

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
        tally = self._unflushed
        if tally is None:
            tally = self._unflushed = Tally(
                asyncio.get_running_loop(),
                self.generation() if self.generation is not None else None)
        self._writer.send_counted(name, partition, str(key).encode(), encoded, tally)

    async def flush(self, timeout: float = 60.0) -> None:
        """Return once every change so far is acknowledged by the broker (``acks=all``),
        and record the changelog offsets the store now holds (faust reads the changelog
        from there when it restores; one write per partition and flush, where faust writes
        one per record — an older offset only means a longer restore).

        Raises :class:`DurabilityError` when a changelog record failed or timed out: the
        local table is then ahead of its changelog, and the only safe move is to stop the
        worker without acknowledging anything (a restart restores the tables)."""
        tally, self._unflushed = self._unflushed, None
        if tally is None:
            return
        tally.close()
        self._flushing += 1
        try:
            try:
                await asyncio.wait_for(tally.done, timeout)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                raise DurabilityError(f"table {self.name}: changelog write not acknowledged: "
                                      f"{exc!r}") from exc
            self._persist_offsets(tally)
        finally:
            self._flushing -= 1

    def idle_tails(self) -> dict[int, tuple[int, int | None]]:
        """partition → (offset of the last record of ours looked at, the generation its
        flush was written in), while none of this table's writes is unflushed or awaiting
        its acknowledgement (else nothing): a record past it is then another writer's."""
        if self._unflushed is not None or self._flushing:
            return {}
        return {p: (offset, self._tail_generation.get(p)) for p, offset in self._tail.items()}

    def looked_at(self, partition: int, offset: int, *, late: bool = False) -> None:
        """Records up to ``offset`` of ``partition`` are being looked at (streams.repair).
        ``late``: those past the last one looked at are an earlier owner's late records,
        which this store must never apply: the persisted offset moves past them too, unless
        it was already held back behind the last record looked at."""
        previous = self._tail.get(partition, -1)
        self._tail[partition] = max(previous, offset)
        store = self.data
        if not late or not isinstance(store, RocksStore) or self._changelog_name is None \
                or partition not in store._dbs:
            return
        tp = TP(self._changelog_name, partition)
        persisted = store.persisted_offset(tp)
        if previous <= (-1 if persisted is None else persisted) < offset:
            store.set_persisted_offset(tp, offset)

    def _persist_offsets(self, tally: Tally) -> None:
        """Move each partition's persisted changelog offset (where a restore resumes) to
        the last record of this flush — when the flush's records follow the persisted
        offset without a gap, or when the only other records among them are late ones of an
        earlier owner, which this store must never apply (``on_foreign`` says so: this
        worker owned the partition throughout, decision 0016).

        Otherwise another writer's records lie in between that this store never applied:
        this worker's own writes from before a pause or a cut may have landed after the
        records of the worker that held the partition meanwhile, and those are the truth.
        The offset stays where it was and the next restore reads them. (Moving it past them
        lost a new owner's pending intents in a chaos run: the worker that got the partition
        back restored from past them, found no intent, and sent a second ``AddOrder`` for 20
        Orders.)"""
        store = self.data
        if not isinstance(store, RocksStore) or self._changelog_name is None:
            return
        for partition, offset in tally.acked.items():
            if partition not in store._dbs:  # closed meanwhile: restored from older
                self._tail.pop(partition, None)
                self._tail_generation.pop(partition, None)
                continue
            tp = TP(self._changelog_name, partition)
            persisted = store.persisted_offset(tp)
            held = -1 if persisted is None else persisted
            # since the last record looked at (ours, or restored: a restore moves the
            # persisted offset to the end it read), anything but ours is another writer's
            seen = max(self._tail.get(partition, -1), held)
            self._tail[partition] = offset
            self._tail_generation[partition] = tally.generation
            late_only = False
            if self.on_foreign is not None and not tally.contiguous(partition, seen):
                late_only = bool(self.on_foreign(self, partition, seen + 1, offset,
                                                 tally.generation)) and seen == held
            if late_only or tally.contiguous(partition, held):
                store.set_persisted_offset(tp, offset)
                self._gapped.discard(partition)
            elif partition not in self._gapped:  # held back from now on, until a restore
                self._gapped.add(partition)
                metrics.CHANGELOG_GAPS.labels(self.name).inc()
                log.info("table %s: changelog partition %d holds records of another writer "
                         "among or before this flush's (offsets %d-%d, %d of them ours, the "
                         "store holds up to %s); the next restore reads from there",
                         self.name, partition, tally.lowest[partition], offset,
                         tally.count[partition], persisted)


CONTRACT.update({
    "S faust Table.on_key_set": (faust.Table, "on_key_set", "a370e35ca55c2c7e36e93f0d4b485927"),
    "S faust Table.on_key_del": (faust.Table, "on_key_del", "4f2900b2f9d24a080d5cbc9eaa1f5566"),
    # DurableTable writes: encoded once, the changelog record through RecordWriter (the
    # path faust's send_changelog / _on_changelog_sent took; streams.faust_seam.writer),
    # the offset persisted per flush
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
    "R faust rocksdb Store.persisted_offset": (
        RocksStore, "persisted_offset", "6f2e502fb86043a1cf0adca5c2fffb19"),
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
