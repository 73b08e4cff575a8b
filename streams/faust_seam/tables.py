"""The tables: keys in their own partition, writes straight into the producer
(:mod:`streams.faust_seam.writer`) and awaitable, in RocksDB sized and shared
(:mod:`streams.faust_seam.rocksdb`) (docs/decisions/0004)."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Iterable
from functools import cached_property
from typing import Any, cast

import faust
import orjson
from faust.stores.rocksdb import Store as RocksStore
from faust.tables.recovery import Recovery
from faust.types import TP
from yarl import URL

from streams import metrics
from streams.faust_seam._base import CONTRACT, key_partition
from streams.faust_seam.rocksdb import KeyPartitionedRocksStore
from streams.faust_seam.writer import RecordWriter, Tally
from streams.state import DurabilityError

log = logging.getLogger(__name__)

# The key of a claim record (decision 0016): a worker writes one to each changelog partition
# of a table once its restore of the partition is complete, before anything else of its own
# there. Never a table entry (a restore leaves it out), and no Order id can take it.
CLAIM_KEY = "\x00claim"
_CLAIM = CLAIM_KEY.encode()
_KEEP_CLAIMS = 16  # per partition, the latest read
_KEEP_SUSPECTS = 10_000  # per partition, the latest of this worker's own late records

# faust.utils.json.dumps's options when orjson is installed (without its ``default`` hook)
_FAUST_ORJSON = orjson.OPT_NON_STR_KEYS | orjson.OPT_UTC_Z


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
        # The late writer's side (decision 0016). ``writer``: who this table's records are
        # from (the worker sets its writer id). ``_suspects``: partition → offset → the
        # generation its flush was written in, of this worker's own records that landed among
        # another writer's while the lease did not answer for the partition; ``_claims``:
        # partition → the claims a restore read, (offset, generation, writer).
        # ``on_skipped(table, partition, keys)``: a restore left out records of keys.
        self.writer = uuid.uuid4().hex
        self._suspects: dict[int, dict[int, int]] = {}
        self._claims: dict[int, list[tuple[int, int, str]]] = {}
        self.on_skipped: Callable[[DurableTable, int, list[str]], None] | None = None
        self._rebuild: set[int] = set()  # partitions whose local store holds them
        # The owner's side at a restore: partition → the generation of this worker's last
        # claim of it; ``held(partition, generation)``: the lease says the partition has
        # been this worker's without a break since then (the worker sets it).
        self._claimed: dict[int, int] = {}
        self.held: Callable[[int, int], bool] | None = None

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
                self.watch(oid, orjson.loads(value) if value is not None else None)

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

    def _restorable(self, events: list[Any]) -> list[Any]:
        """The changelog events a restore applies: not the claims, and not this worker's own
        records that landed after another writer's claim of a later generation. Those were
        written before this worker lost the partition and held by a cut or a pause; the
        claimant's restore never read them, and their acknowledgement came after this
        worker's lease had ended, so nothing was done on them (streams.lease): as if lost
        in a crash. A restore that applied them would end with values the partition's owner
        since then never had — a decision marked unsent again, an intent pending again."""
        suspects, kept = self._suspects, []
        skipped: dict[int, list[str]] = {}
        held: dict[int, list[int]] = {}  # partition → [first offset, last offset, count]
        holds: dict[int, bool] = {}
        floors: dict[int, int] = {}
        stale: dict[int, int] = {}
        for event in events:
            msg = event.message
            floor = floors.get(msg.partition)
            if floor is None:
                floor = floors[msg.partition] = self._floor(msg.tp)
            if msg.offset <= floor:
                stale[msg.partition] = stale.get(msg.partition, 0) + 1
                continue
            key = msg.key if isinstance(msg.key, bytes) else str(msg.key).encode()
            if key == _CLAIM:
                self._read_claim(msg)
                continue
            ours = holds.get(msg.partition)
            if ours is None:
                ours = holds[msg.partition] = self._holds(msg.partition)
            if ours:
                span = held.get(msg.partition)
                if span is None:
                    held[msg.partition] = [msg.offset, msg.offset, 1]
                else:
                    span[1], span[2] = msg.offset, span[2] + 1
                continue
            mine = suspects.get(msg.partition) if suspects else None
            if mine is not None and msg.offset in mine and self._claimed_after(
                    msg.partition, msg.offset, mine[msg.offset]):
                skipped.setdefault(msg.partition, []).append(key.decode())
                continue
            kept.append(event)
        for partition, count in stale.items():
            metrics.CHANGELOG_SKIPPED.labels(self.name).inc(count)
            log.info("table %s: changelog partition %d: %d record(s) at or below the offset "
                     "the store holds (%d) handed to it again, left out (faust's recovery "
                     "buffer, applied at a later rebalance)", self.name, partition, count,
                     floors[partition], extra={"partition": partition, "count": count})
        for partition, (first, last, count) in held.items():
            self._left_out_held(partition, first, last, count)
        for partition, keys in skipped.items():
            metrics.CHANGELOG_SKIPPED.labels(self.name).inc(len(keys))
            log.warning("table %s: restoring changelog partition %d left out %d record(s) of "
                        "this worker's that landed after another worker had claimed the "
                        "partition (written before this worker lost it, held by a cut or a "
                        "pause)", self.name, partition, len(keys),
                        extra={"partition": partition, "count": len(keys)})
            if self.on_skipped is not None:
                self.on_skipped(self, partition, keys)
        return kept

    def _floor(self, tp: TP) -> int:
        """The changelog offset the store holds ``tp`` up to (-1: none known). A record at or
        below it is older than what the store holds: faust's recovery keeps taking the
        records fetched past a restore's end into its buffer and applies that buffer at the
        next rebalance's revocation (``Recovery._slurp_changelogs``, ``flush_buffers``) —
        over the values this worker wrote since (a chaos run: an intent accepted at 1844
        set back to pending by its own record 1839, applied 20 s later)."""
        store = self.data
        if not isinstance(store, RocksStore):
            return -1
        persisted = store.persisted_offset(tp)
        return -1 if persisted is None else int(persisted)

    def _holds(self, partition: int) -> bool:
        """This worker restored ``partition``, claimed it, and has held it since (its store
        open throughout): its store is the partition's truth. Every record a restore in
        place reads past the store's persisted offset is then either its own (the store
        holds it, or a later value) or another writer's late one (written under a lease that
        ended before this worker was assigned, never backing a WHMCS write: decision 0016) —
        none may be applied."""
        generation = self._claimed.get(partition)
        return generation is not None and self.held is not None and \
            self.held(partition, generation)

    def _left_out_held(self, partition: int, first: int, last: int, count: int) -> None:
        generation = self._claimed[partition]
        metrics.CHANGELOG_SKIPPED.labels(self.name).inc(count)
        log.info("table %s: restoring changelog partition %d, held since generation %d: %d "
                 "record(s) past the store's (offsets %d-%d: ours, or another writer's late "
                 "ones) left out; the repair looks at them", self.name, partition,
                 generation, count, first, last,
                 extra={"partition": partition, "count": count})
        # records up to the last one of ours looked at were looked at then (a flush that met
        # another writer's told the repair); past it, another writer's may be among them:
        # the changelog must end with ours
        start = max(first, self._tail.get(partition, -1) + 1)
        self._tail[partition] = max(self._tail.get(partition, -1), last)
        if self.on_foreign is not None and start <= last:
            self.on_foreign(self, partition, start, last, generation)

    def _read_claim(self, msg: Any) -> None:
        try:
            value = orjson.loads(msg.value)
            claim = (int(msg.offset), int(value["generation"]), str(value["writer"]))
        except (TypeError, ValueError, KeyError) as exc:  # orjson.JSONDecodeError: ValueError
            log.warning("table %s: changelog partition %d offset %d: a claim record that "
                        "cannot be read (%s); ignored", self.name, msg.partition, msg.offset,
                        exc)
            return
        claims = self._claims.setdefault(msg.partition, [])
        if claim not in claims:
            claims.append(claim)
            del claims[:-_KEEP_CLAIMS]

    def _claimed_after(self, partition: int, offset: int, generation: int) -> bool:
        """Another writer claimed ``partition`` in a later generation than ``generation``
        before ``offset``."""
        return any(at < offset and claimed > generation and writer != self.writer
                   for at, claimed, writer in self._claims.get(partition, ()))

    def persisted_offset(self, tp: TP) -> int | None:
        """Where faust's recovery starts reading ``tp`` (it asks at every assignment, kept
        partitions included). A partition whose local store took this worker's own late
        records when they were written (the store is written before the changelog) is
        dropped and read from the changelog's start: a restore in place would leave those
        values there however it reads the changelog (decision 0016). -1, not None: faust
        keeps the offset it last read a partition to, in memory, and resumes there when the
        store has none (``Recovery._add``'s ``setdefault``) — a member paused through a
        generation still has it, and the emptied store would have been filled from there
        (a chaos run: three decisions lost, the Orders decided again)."""
        store = self.data
        if tp.partition in self._rebuild and isinstance(store, KeyPartitionedRocksStore):
            self._rebuild.discard(tp.partition)
            self._claimed.pop(tp.partition, None)
            store.drop_partition(tp.partition)
            return -1
        return cast("int | None", super().persisted_offset(tp))

    def _suspect(self, partition: int, offsets: list[int], generation: int) -> None:
        self._rebuild.add(partition)
        mine = self._suspects.setdefault(partition, {})
        for offset in offsets:
            mine[offset] = generation
        if len(mine) > _KEEP_SUSPECTS:
            for offset in sorted(mine)[:len(mine) - _KEEP_SUSPECTS]:
                del mine[offset]

    def _persist_read(self, events: list[Any]) -> None:
        """A restore read ``events`` and left some out: the store holds the changelog up to
        the last of them all the same (a claim or a record left out at the end of a batch
        would otherwise be read again at the next restore)."""
        store = self.data
        if not isinstance(store, RocksStore):
            return
        ends: dict[Any, int] = {}
        for event in events:
            tp, offset = event.message.tp, event.message.offset
            if offset > ends.get(tp, -1):
                ends[tp] = offset
        for tp, offset in ends.items():
            if tp.partition in store._dbs and offset > (store.persisted_offset(tp) or -1):
                store.set_persisted_offset(tp, offset)

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
    # the rebuild of a partition's store: faust's recovery asks each assigned partition's
    # persisted offset of the table when it adds it
    "S faust Collection.persisted_offset": (
        faust.Table, "persisted_offset", "d473d3ab3fd6f036d974d0abe3d485a1"),
    "R faust Recovery._add": (Recovery, "_add", "1584a197b11bf835c0e3c497952413ce"),
    # _floor: records fetched past a restore's end, buffered, applied at the next revocation
    "R faust Recovery._slurp_changelogs": (Recovery, "_slurp_changelogs", "7825c7e50f766d5ab0fd246b63420ea0"),
    "R faust Recovery.flush_buffers": (Recovery, "flush_buffers", "6fa9c17f1071018c49cb6d411a34fb4a"),
    "S faust Collection._new_store_by_url": (faust.Table, "_new_store_by_url", "343a8125107d3f69ced468ee15665995"),
    "S faust Collection.partition_for_key": (faust.Table, "partition_for_key", "3b2291811b8dd791cdd0e690b2b09d96"),
    # DurableTable.read, the persisted offsets and rocksdb_memory (streams.faust_seam.rocksdb):
    # the store (if any) in Collection._data
    "R faust Collection.data": (faust.Table, "data", "ade4a02ddd5582cb4264a7f927bf7a59"),
})
