"""The tables: keys in their own partition, writes straight into the producer
(:mod:`streams.faust_seam.writer`) and awaitable, in RocksDB sized and shared
(:mod:`streams.faust_seam.rocksdb`) (docs/decisions/0004)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from functools import cached_property
from typing import Any, cast

import faust
import orjson
from faust.stores.rocksdb import Store as RocksStore
from faust.types import TP
from yarl import URL

from streams import metrics
from streams.faust_seam._base import CONTRACT, key_partition
from streams.faust_seam.restore import CLAIM_KEY, RestoreGuards
from streams.faust_seam.rocksdb import KeyPartitionedRocksStore
from streams.faust_seam.writer import RecordWriter, Tally
from streams.state import DurabilityError

log = logging.getLogger(__name__)

# faust.utils.json.dumps's options when orjson is installed (without its ``default`` hook)
_FAUST_ORJSON = orjson.OPT_NON_STR_KEYS | orjson.OPT_UTC_Z


#: what a changelog record's value that does not decode is read as by faust's restore (the
#: memory store keeps it; RocksDB keeps the record's bytes): a text no typed read takes for a
#: table value (streams.state.UnreadableState)
UNREADABLE_VALUE = "<sfprov: a changelog value that does not decode>"


class ChangelogSchema(faust.Schema):
    """The tables' schema, whose changelog records are always read. faust decodes each record
    its restore reads before the restore sees it, and a record its codec refuses (a value
    that is not JSON, a key that is not UTF-8: written by hand or by a bug) never reached the
    restore's buffer — the restore waited for that offset for ever, and the worker never
    became ready, at every restart. Read leniently here, the record is restored as it is
    (RocksDB takes the record's own bytes): its Order's events are dead-lettered
    ``STATE_UNREADABLE``, and the sweep passes over it."""

    def loads_key(self, app: Any, message: Any, *, loads: Any = None,
                  serializer: Any = None) -> Any:
        try:
            return super().loads_key(app, message, loads=loads, serializer=serializer)
        except faust.exceptions.KeyDecodeError:
            key = message.key
            return key.decode("utf-8", "surrogateescape") if isinstance(key, bytes) else key

    def loads_value(self, app: Any, message: Any, *, loads: Any = None,
                    serializer: Any = None) -> Any:
        try:
            return super().loads_value(app, message, loads=loads, serializer=serializer)
        except faust.exceptions.ValueDecodeError:
            return UNREADABLE_VALUE


class DurableTable(RestoreGuards):
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
        # ``on_foreign`` (RestoreGuards; streams.repair) is told of each flush whose records
        # do not follow the last one's, with the offsets to look at and the group generation
        # its first record was written in (``generation``); it answers True when they are an
        # earlier owner's late records (this worker owned the partition throughout): the
        # persisted offset may then move past them.
        self.generation: Callable[[], int | None] | None = None
        self._tail_generation: dict[int, int | None] = {}  # ``_tail``'s flush's generation
        self._flushing = 0  # flushes awaiting their acknowledgements

    def apply_changelog_batch(self, batch: Any) -> None:
        events = list(batch)
        batch = self._restorable(events)
        super().apply_changelog_batch(batch)
        if len(batch) < len(events):  # what was left out was read all the same
            self._persist_read(events)
        if self.watch is not None:
            for event in batch:
                key, value = event.message.key, event.message.value
                oid = key.decode() if isinstance(key, bytes) else str(key)
                try:
                    decoded = orjson.loads(value) if value is not None else None
                except orjson.JSONDecodeError as exc:
                    # restored as it is (the store holds it): the sweep passes over it and
                    # the Order's events are dead-lettered (streams.state.UnreadableState);
                    # the rest of the batch is still watched
                    log.error("restore: %s changelog record at partition %s offset %s (Order "
                              "%s) is not a JSON value: %s", self.name, event.message.partition,
                              event.message.offset, oid, exc, extra={"order_id": oid})
                    decoded = None
                self.watch(oid, decoded)

    def claim(self, partitions: Iterable[int], generation: int) -> None:
        """Mark each changelog ``partition`` as restored by this worker in ``generation``
        and written by it from here on: a record of another writer's that lands after the
        mark, this worker's restore never read (decision 0016). Sent before anything else of
        this worker's there (one partition's records land in the order they are sent);
        durable with the next flush."""
        value = orjson.dumps({"generation": generation, "writer": self.writer})
        for partition in sorted(partitions):
            self._send(partition, CLAIM_KEY, value)
            self._claimed[partition] = generation
            self._rebuilding.discard(partition)  # its restore is complete
            self.touch(partition, force=True)  # caught up with its changelog: current

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
        """The store first, then the changelog record: a write the store refuses has no
        record, and stops the worker (:meth:`_refused`)."""
        store = self.data
        encoded = self._encode_value(value)
        try:
            if isinstance(store, KeyPartitionedRocksStore):
                store._set(str(key).encode(), encoded)
            else:
                store[key] = value
        except Exception as exc:
            if isinstance(store, RocksStore):
                raise self._refused("write", key, exc) from exc
            raise
        self._changed(key, value, encoded)

    def __delitem__(self, key: Any) -> None:
        store = self.data
        try:
            del store[key]
        except Exception as exc:
            if isinstance(store, RocksStore):
                raise self._refused("delete", key, exc) from exc
            raise
        self.on_key_del(key)

    def _refused(self, what: str, key: Any, exc: Exception) -> DurabilityError:
        """A RocksDB store's failure (read-only after a failed background flush, a full
        disk) as :class:`DurabilityError`: the worker stops without acknowledging the event
        (retried and then dead-lettered, its commit would skip it). Its changelog record was
        never queued — restored, it would bring back what the store never held (a pending
        intent, which the sweep then answered with a contradicting Failed). A memory
        store's errors (a missing key's KeyError) are raised as they are."""
        return DurabilityError(f"table {self.name}: the local store refused a {what} of "
                               f"{str(key)!r}: {exc!r}")

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
        generation = self.generation() if self.generation is not None else None
        tally = self._unflushed
        if tally is None:
            tally = self._unflushed = Tally(asyncio.get_running_loop(), generation)
        stamp = self.stamp_generation
        self._writer.send_counted(name, partition, str(key).encode(), encoded, tally,
                                  self._stamp(generation if stamp is None else stamp()))

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
                async with asyncio.timeout(timeout):  # not wait_for: it can drop a cancel
                    await tally.done
            except asyncio.CancelledError:
                raise
            except TimeoutError as exc:
                # the worker's idempotent producer retries a refused batch for as long as it
                # runs: a broker refusing every write (too few in-sync replicas) ends here,
                # and the reason is only in aiokafka's warnings — say where to look
                raise DurabilityError(
                    f"table {self.name}: changelog write not acknowledged within "
                    f"{timeout:.0f}s (the brokers did not answer, or refused and were asked "
                    "again: see the aiokafka warnings above, e.g. NotEnoughReplicas)") from exc
            except Exception as exc:
                raise DurabilityError(f"table {self.name}: changelog write not acknowledged: "
                                      f"{exc!r}") from exc
            try:
                self._persist_offsets(tally)
            except Exception as exc:
                # the local store's restore point (read-only after a failed background
                # flush, a full disk): the worker stops, as for a write the store refuses
                raise DurabilityError(f"table {self.name}: the local store refused the "
                                      f"changelog's offsets: {exc!r}") from exc
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
            self.touch(partition)  # held and written: current
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
                owner = bool(self.on_foreign(self, partition, seen + 1, offset,
                                             tally.generation))
                late_only = owner and seen == held
                if not owner and tally.generation is not None:
                    # ours may be the late ones: a restore after another worker's claim
                    # leaves them out (_restorable)
                    self._suspect(partition, tally.offsets[partition], tally.generation)
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
                         len(tally.offsets[partition]), persisted)


# mode names a service's logger after its class's module: keep faust's (common.log quietens
# it; WORKER_FAUST_LOG_LEVEL), set after the class (mode replaces one set in its body)
DurableTable.logger = faust.Table.logger


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
    "R faust Collection._maybe_del_key_ttl": (
        faust.Table, "_maybe_del_key_ttl", "c873b702c4e59af5e9bffcfa3c132152"),
    "R faust rocksdb Store.set_persisted_offset": (
        RocksStore, "set_persisted_offset", "b4c811926678346ebb8c40486dbc46d0"),
    "R faust rocksdb Store.persisted_offset": (
        RocksStore, "persisted_offset", "6f2e502fb86043a1cf0adca5c2fffb19"),
    "S faust Collection._new_store_by_url": (faust.Table, "_new_store_by_url", "343a8125107d3f69ced468ee15665995"),
    "S faust Collection.partition_for_key": (faust.Table, "partition_for_key", "3b2291811b8dd791cdd0e690b2b09d96"),
    # DurableTable.read, the persisted offsets and rocksdb_memory (streams.faust_seam.rocksdb):
    # the store (if any) in Collection._data
    "R faust Collection.data": (faust.Table, "data", "ade4a02ddd5582cb4264a7f927bf7a59"),
    # ChangelogSchema: the changelog topic takes the table's schema, whose compiled decode
    # goes through loads_key / loads_value (a refusal there skipped the record, and the
    # restore waited for its offset for ever)
    "S faust Schema.loads_key": (
        faust.Schema, "loads_key", "9adc30303f20915c764a93dc48721210"),
    "S faust Schema.loads_value": (
        faust.Schema, "loads_value", "61a4628b4e0966e6fc5602c1b9a13de3"),
    "R faust Schema.compile": (faust.Schema, "compile", "d46eec5ce3195b2c6752cb860a10946c"),
    "R faust Collection._new_changelog_topic": (
        faust.Table, "_new_changelog_topic", "77bea64b59f798094f8de7a939a2e159"),
})
