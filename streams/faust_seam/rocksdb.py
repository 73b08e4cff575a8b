"""RocksDB for the tables, sized and shared: one block cache and one memtable bound for all
of the process's DBs, each key filed under its own partition, and the memory they hold read
for the gauge (docs/decisions/0004)."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any, cast

from faust.stores.rocksdb import RocksDBOptions
from faust.stores.rocksdb import Store as RocksStore
from faust.types import TP

from streams.faust_seam._base import CONTRACT, key_partition

log = logging.getLogger(__name__)

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
        # partition → an offset its persisted offset must stay below until it is dropped
        # (a restore in place found it holding a late record's value: decision 0016's stamp)
        self._held_below: dict[int, int] = {}
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

    def hold_below(self, partition: int, offset: int) -> None:
        """Keep ``partition``'s persisted changelog offset below ``offset`` until the
        partition is dropped (:meth:`drop_partition`): whatever sets it later — the rest of
        a restore, a flush — a process restarted on this store reads the record at
        ``offset`` again."""
        held = self._held_below.get(partition)
        self._held_below[partition] = offset if held is None else min(held, offset)

    def set_persisted_offset(self, tp: TP, offset: int) -> None:
        below = self._held_below.get(tp.partition)
        super().set_persisted_offset(tp, offset if below is None else min(offset, below - 1))

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

    def drop_partition(self, partition: int) -> None:
        """Empty ``partition``'s DB — every key, the persisted changelog offset with them —
        through its own handle: the next restore rebuilds it from the changelog's start
        (decision 0016). Its files are never deleted: a RocksDB iterator may still hold the
        handle (the sweep's key scan yields between slices), ``close()`` is then a no-op,
        and the handle, let go after its files were deleted, wrote a MANIFEST naming them —
        every later open failed (``Corruption: ... .sst: No such file or directory``). An
        open iterator reads on from its snapshot. The deletion is flushed to the DB's files
        at once: the worker's tables write no WAL, and a crash that lost it would leave the
        next restore in place over the values the rebuild is for."""
        db = self._db_for_partition(partition)
        it = db.iter()
        try:
            it.seek_to_last()
            last = it.key() if it.valid() else None
        finally:
            del it
        self._held_below.pop(partition, None)
        if last is not None:
            # every key sorts at or above b"" and below the successor of the last one
            db.delete_range(b"", bytes(last) + b"\x00")
            db.flush(wait=True)
        log.warning("table %s: local store of partition %d dropped; its restore rebuilds it "
                    "from the changelog's start", self.table.name, partition)

    def _set(self, key: bytes, value: bytes | None) -> None:
        self._db_for_key(key).put(key, value)

    def _get(self, key: bytes) -> bytes | None:
        return cast("bytes | None", self._db_for_key(key).get(key))

    def _contains(self, key: bytes) -> bool:
        return self._db_for_key(key).get(key) is not None

    def _del(self, key: bytes) -> None:
        self._db_for_key(key).delete(key)


# mode names a service's logger after its class's module: keep faust's (common.log quietens
# it; WORKER_FAUST_LOG_LEVEL), set after the class (mode replaces one set in its body)
KeyPartitionedRocksStore.logger = RocksStore.logger


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


CONTRACT.update({
    "S faust rocksdb RocksDBOptions.as_options": (
        RocksDBOptions, "as_options", "d2a1bea17736d2eb2f8d2da592ef843f"),
    "S faust rocksdb RocksDBOptions.open": (
        RocksDBOptions, "open", "ff87e92d69e2f487e2657c1df266543f"),
    # BoundedRocksDBOptions: super().__init__, and the fields KeyPartitionedRocksStore copies
    "R faust rocksdb RocksDBOptions.__init__": (
        RocksDBOptions, "__init__", "68ec2240dbf40cf8060c6a90cfe9aeba"),
    "R faust rocksdb Store.__init__": (RocksStore, "__init__", "c7c0fa2989e8ab4a4349ff29df825847"),
    # rocksdb_memory: the open DBs in Store._dbs (the store in Collection._data: tables.py)
    "R faust rocksdb Store._db_for_partition": (
        RocksStore, "_db_for_partition", "cb7e67d5f9efc4bced7b7ab09a55fe71"),
    # drop_partition: empties the DB _db_for_partition gives (opened at its partition_path
    # if faust's revocation popped it from _dbs, which does not close it)
    "R faust rocksdb Store.revoke_partitions": (
        RocksStore, "revoke_partitions", "3f85447a24fc34ffd1ecb5039f502ac6"),
    "R faust rocksdb Store.partition_path": (
        RocksStore, "partition_path", "0cc4eae7dc33fcf199f5a271d5186984"),
    "S faust rocksdb Store._set": (RocksStore, "_set", "4227e561e288d9413bf663a3a67940fd"),
    "S faust rocksdb Store._get": (RocksStore, "_get", "7ae8dfd6d7754a5952ae162d4d5cf0d5"),
    "S faust rocksdb Store._contains": (
        RocksStore, "_contains", "bd7d4e5252a71b9a5705677611435431"),
    "S faust rocksdb Store._del": (RocksStore, "_del", "07f42ff3caefffddb002ba3c316120ee"),
    # a table's keys (the sweep's scan, streams.recovery._keys): one RocksDB iterator per
    # active partition's DB in _dbs, read from a snapshot (the table may change while the
    # scan yields; drop_partition empties a DB one may hold), the offset key left out
    "R faust rocksdb Store._iterkeys": (
        RocksStore, "_iterkeys", "12ecc1051cc5505d73fd9466067321c7"),
    "R faust rocksdb Store._dbs_for_actives": (
        RocksStore, "_dbs_for_actives", "28ffca271cde5b062244446850fabb3a"),
    "R faust rocksdb Store._visible_keys": (
        RocksStore, "_visible_keys", "28b3c24a6884cbcd69ee040fa72fb9eb"),
})
