"""A table's restore, guarded (decision 0016): what a restore of a changelog partition must
leave out, and when a partition's local store must be read again from the changelog's start.

* **Claims.** A worker writes a claim record (:data:`CLAIM_KEY`) to each changelog partition
  it restored, before anything else of its own there; a record of another writer's after the
  claim, that restore never read.
* **The late writer's side.** This worker's own records that landed among another writer's
  while the lease did not answer for the partition (``_suspect``) are left out of a restore
  when they follow another writer's claim of a later generation; the partition's store,
  which took them when they were written, is dropped and read from offset 0
  (``persisted_offset``), and the restored values of their keys are sent again
  (``on_skipped``) — unless the lease says, by then, that this worker has held the
  partition without a break since they were written: they were not late, and the store
  is kept (the held rule).
* **The stamp.** Each record carries its writer and the group generation it was written in
  (:data:`STAMP_HEADER`). Any restore leaves out a record that follows a claim of a later
  generation by another writer (the latest claim read before it): written under a lease that
  had ended before that claimant restored the partition, never read by that restore, and
  backing no WHMCS write. This needs no memory of the late writer's own, so it holds for a
  restore by a third worker, by the late writer restarted, or by the late writer while the
  flush that sent them is still open.
* **The held rule.** A worker that restored a partition, claimed it and has held it since
  has the truth in its store: its restore in place applies nothing past the store's offset
  and hands that range to the repair (``on_foreign``).
* **The floor.** Records at or below the store's persisted offset, which faust's recovery
  buffer hands again at a later revocation, are left out.

:class:`RestoreGuards` is the layer of :class:`~streams.faust_seam.tables.DurableTable` that
holds them; the table's write path (``_send``, ``flush``) is in :mod:`.tables`."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import faust
import orjson
from faust.stores.rocksdb import Store as RocksStore
from faust.tables.recovery import Recovery
from faust.transport.drivers.aiokafka import Consumer as AIOKafkaDriverConsumer
from faust.types import TP

from common.kafka import CHANGELOG_DELETE_RETENTION_MS
from streams import metrics
from streams.faust_seam._base import CONTRACT
from streams.faust_seam.rocksdb import KeyPartitionedRocksStore

log = logging.getLogger(__name__)

# The key of a claim record (decision 0016): a worker writes one to each changelog partition
# of a table once its restore of the partition is complete, before anything else of its own
# there. Never a table entry (a restore leaves it out), and no Order id can take it.
CLAIM_KEY = "\x00claim"
_CLAIM = CLAIM_KEY.encode()
_KEEP_CLAIMS = 16  # per partition, the latest read
_KEEP_SUSPECTS = 10_000  # per partition, the latest of this worker's own late records
# A partition's local store not kept current for this long (held, or restored) is read again
# from the changelog's start when the partition comes to this worker: the changelogs are
# compacted, and Kafka drops a tombstone delete.retention.ms (1 day unless the topic says
# otherwise: the changelogs declare it, common.kafka) after it was cleaned — a store that
# missed a deletion longer than that, resumed from its persisted offset, would keep the
# deleted entry for ever (an intent settled and forgotten by another owner, pending again)
STALE_STORE_S = CHANGELOG_DELETE_RETENTION_MS / 1000 / 2
_TOUCH_EVERY_S = 60.0  # a held partition's "current at" stamp is renewed this often
# The header each changelog record carries: b"<generation> <writer>", the group generation its
# worker was last assigned in (kept through a rebalance) and its writer's id (a record written
# before any assignment carries none and is never judged by it).
STAMP_HEADER = "sfprov-writer"


def read_stamp(headers: Any) -> tuple[int, str] | None:
    """(generation, writer) of a record's :data:`STAMP_HEADER`, or None (none, or unreadable:
    the record is then applied, as before the stamp)."""
    for name, value in headers or ():
        if name == STAMP_HEADER:
            generation, _, writer = bytes(value).partition(b" ")
            try:
                return int(generation), writer.decode()
            except (ValueError, UnicodeDecodeError):
                return None
    return None


def _utf8(key: bytes) -> bool:
    try:
        key.decode()
    except UnicodeDecodeError:
        return False
    return True


class RestoreGuards(faust.Table):
    """What a restore of this table applies, and where it starts (the module's four rules).

    Shared with the write path: ``_tail`` (partition → offset of the last record of this
    table's looked at) and ``on_foreign(table, partition, first, last, generation)`` (another
    writer's records among this table's own: streams.repair)."""

    #: the group generation now (the worker sets it, :class:`.tables.DurableTable`)
    generation: Callable[[], int | None] | None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.on_foreign: Callable[[Any, int, int, int, int | None], bool] | None = None
        self._tail: dict[int, int] = {}
        # ``writer``: who this table's records are from (the worker sets its writer id).
        # ``_suspects``: partition → offset → the generation its flush was written in, of
        # this worker's own records that landed among another writer's while the lease did
        # not answer for the partition; ``_claims``: partition → the claims a restore read,
        # (offset, generation, writer). ``on_skipped(table, partition, keys)``: a restore
        # left out records of keys.
        self.writer = uuid.uuid4().hex
        # a store not kept current this long is read from the changelog's start (_stale):
        # half the changelog's delete.retention.ms — the worker sets it from the topic's own
        # when that is shorter than declared (streams.__main__)
        self.stale_after_s = STALE_STORE_S
        self._suspects: dict[int, dict[int, int]] = {}
        self._claims: dict[int, list[tuple[int, int, str]]] = {}
        self.on_skipped: Callable[[Any, int, list[str]], None] | None = None
        self._rebuild: set[int] = set()  # partitions whose local store holds them
        # partitions whose store was dropped for this restore (it holds no local write)
        self._rebuilding: set[int] = set()
        # partition → the generations of the flushes that marked it for a rebuild, since its
        # last one (``persisted_offset``: held since all of them, the store is kept)
        self._marked: dict[int, set[int]] = {}
        # The owner's side at a restore: partition → the generation of this worker's last
        # claim of it; ``held(partition, generation)``: the lease says the partition has
        # been this worker's without a break since then (the worker sets it).
        self._claimed: dict[int, int] = {}
        self.held: Callable[[int, int], bool] | None = None
        self._touched: dict[int, float] = {}  # partition → when its store was noted current
        self._stamps: tuple[str, int | None, list[tuple[str, bytes]] | None] = ("", None, None)
        # the generation a record is stamped with (the worker sets it: the last one it was
        # assigned in, kept through a rebalance — a record written then was written under no
        # lease, and is as late as one of that generation); None: ``generation``'s
        self.stamp_generation: Callable[[], int | None] | None = None

    def _stamp(self, generation: int | None) -> list[tuple[str, bytes]] | None:
        """The headers of a record written now (one list per writer and generation, shared
        by its records)."""
        writer, stamped, headers = self._stamps
        if generation is None:
            return None
        if writer != self.writer or stamped != generation or headers is None:
            headers = [(STAMP_HEADER, f"{generation} {self.writer}".encode())]
            self._stamps = (self.writer, generation, headers)
        return headers

    def _stamped_late(self, msg: Any) -> tuple[int, str, int, str] | None:
        """``msg`` is stamped with a generation earlier than that of the latest claim read
        before it, by another writer: (its generation, its writer, the claim's generation,
        the claimant), or None. The latest claim, not any: a group whose generations
        started again from 1 (its metadata expired while empty) has older claims of higher
        generations before its own."""
        stamp = read_stamp(getattr(msg, "headers", None))
        if stamp is None:
            return None
        latest = None
        for claim in self._claims.get(msg.partition, ()):
            if claim[0] < msg.offset and (latest is None or claim[0] > latest[0]):
                latest = claim
        if latest is None or latest[2] == stamp[1] or latest[1] <= stamp[0]:
            return None
        return stamp[0], stamp[1], latest[1], latest[2]

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
        stamped: dict[int, tuple[int, str, int, str]] = {}  # partition → its first stamped late
        held_here: dict[int, int] = {}  # partition → stamped late records its store holds
        # (partition, key) → the value this batch leaves under the key so far (what a late
        # record is compared with, before the store: the batch is applied after this)
        leaves: dict[tuple[int, bytes], bytes | None] = {}
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
            if not _utf8(key):  # no Order's (written by hand or by a bug): never restored
                metrics.CHANGELOG_SKIPPED.labels(self.name).inc()
                log.error("table %s: changelog partition %d offset %d: a key that is not "
                          "UTF-8 text (%r), no Order's; left out", self.name, msg.partition,
                          msg.offset, key[:40], extra={"partition": msg.partition,
                                                       "offset": msg.offset})
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
            late = self._stamped_late(msg)
            if late is not None:
                stamped.setdefault(msg.partition, late)
                if self._left_out_stamped(msg, key, late, leaves):
                    skipped.setdefault(msg.partition, []).append(key.decode())
                else:
                    held_here[msg.partition] = held_here.get(msg.partition, 0) + 1
                continue
            leaves[(msg.partition, key)] = msg.value
            kept.append(event)
        for partition, count in stale.items():
            metrics.CHANGELOG_SKIPPED.labels(self.name).inc(count)
            log.info("table %s: changelog partition %d: %d record(s) at or below the offset "
                     "the store holds (%d) handed to it again, left out (faust's recovery "
                     "buffer, applied at a later rebalance)", self.name, partition, count,
                     floors[partition], extra={"partition": partition, "count": count})
        for partition, count in held_here.items():
            metrics.CHANGELOG_SKIPPED.labels(self.name).inc(count)
            generation, writer, claimed, claimant = stamped[partition]
            log.warning("table %s: restoring changelog partition %d left out %d record(s) "
                        "that landed after another worker's claim and that the local store "
                        "holds (written here before a cut, a pause or a restart; the first: "
                        "%s's of generation %d, after %s's claim of generation %d): the "
                        "partition's store is read from its start at its next assignment",
                        self.name, partition, count, writer, generation, claimant, claimed,
                        extra={"partition": partition, "count": count})
        for partition, (first, last, count) in held.items():
            self._left_out_held(partition, first, last, count)
        for partition, keys in skipped.items():
            metrics.CHANGELOG_SKIPPED.labels(self.name).inc(len(keys))
            head = stamped.get(partition)
            whose = "" if head is None else \
                f" (the first: {head[1]}'s of generation {head[0]}, after {head[3]}'s claim " \
                f"of generation {head[2]})"
            log.warning("table %s: restoring changelog partition %d left out %d record(s) that "
                        "landed after another worker had claimed the partition (written "
                        "before their writer lost it, held by a cut or a pause)%s", self.name,
                        partition, len(keys), whose,
                        extra={"partition": partition, "count": len(keys)})
            if self.on_skipped is not None:
                self.on_skipped(self, partition, keys)
        return kept

    def _left_out_stamped(self, msg: Any, key: bytes, late: tuple[int, str, int, str],
                          leaves: dict[tuple[int, bytes], bytes | None]) -> bool:
        """A stamped late record left out: True when the store does not hold its value (its
        key's restored value may be sent again, ``on_skipped``). False when it does: written
        on this disk (by this process or an earlier one) before a cut, a pause or a crash,
        the store took it when it was written, and a restore in place leaves it there — so
        the partition is read from its start at its next assignment (as for
        :meth:`_suspect`'s records), and until then its key is not sent again (that would
        send the late value as the owner's). By bytes, not by writer: a rebuild's store never
        holds them (it applies none), so a rebuild marks none, and a tombstone is never
        marked (the store without the key may hold it or not). Compared with what the restore
        leaves under the key: a record kept earlier in the batch, else the store's value.
        The partition's persisted offset is held below the record until the store is dropped
        (``KeyPartitionedRocksStore.hold_below``: whatever moves it later, the rest of the
        restore or a flush), so a restart before that assignment reads it again and marks
        the partition again."""
        partition = msg.partition
        if msg.value is None or partition in self._rebuilding:
            return True
        held = leaves[(partition, key)] if (partition, key) in leaves else self._store_get(key)
        if held != msg.value:
            return True
        self._suspect(partition, [msg.offset], late[0])
        store = self.data
        if isinstance(store, KeyPartitionedRocksStore):
            store.hold_below(partition, msg.offset)
        return False

    def _store_get(self, key: bytes) -> bytes | None:
        store = self.data
        return cast("bytes | None", store._get(key)) if isinstance(store, RocksStore) else None

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
        values there however it reads the changelog (decision 0016) — not when this worker
        has held it since those records' generations (:meth:`_held_since_suspects`). -1,
        not None: faust keeps the offset it last read a partition to, in memory, and
        resumes there when the store has none (``Recovery._add``'s ``setdefault``) — a
        member paused through a generation still has it, and the emptied store would have
        been filled from there (a chaos run: three decisions lost, the Orders decided
        again)."""
        store, partition = self.data, tp.partition
        if isinstance(store, KeyPartitionedRocksStore) and self._stale(store, tp):
            store.drop_partition(partition)
            self._rebuild.discard(partition)
            self._marked.pop(partition, None)
            self._claimed.pop(partition, None)
            self._rebuilding.add(partition)
            return -1
        if partition in self._rebuild and isinstance(store, KeyPartitionedRocksStore):
            if self._held_since_suspects(partition):
                self._kept_suspects(partition)
            else:
                store.drop_partition(partition)  # a failure leaves it marked: asked again
                self._rebuild.discard(partition)
                self._marked.pop(partition, None)
                self._claimed.pop(partition, None)
                self._rebuilding.add(partition)
                return -1
        self._rebuilding.discard(partition)
        return cast("int | None", super().persisted_offset(tp))

    def _current_file(self, partition: int) -> Path | None:
        store = self.data
        if not isinstance(store, KeyPartitionedRocksStore):
            return None
        path = store.partition_path(partition)
        return path.with_name(path.name + ".current")

    def touch(self, partition: int, *, force: bool = False) -> None:
        """Note that ``partition``'s local store is current now — caught up with its
        changelog: its restore complete (the claim), held with no restore under way (a
        flush of this worker's, the sweep); never while a restore or a standby reads its way
        through (a partial read stamped
        current would let a chain of quick restarts resume it for ever): the mtime of a file
        beside its DB, at most every :data:`_TOUCH_EVERY_S` unless ``force``."""
        now = time.monotonic()
        if not force and now - self._touched.get(partition, -_TOUCH_EVERY_S) < _TOUCH_EVERY_S:
            return
        self._touched[partition] = now
        path = self._current_file(partition)
        if path is None:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
        except OSError as exc:  # the worst it costs: a rebuild the store did not need
            log.warning("table %s: cannot note partition %d's store current (%s)", self.name,
                        partition, exc)

    def touch_held(self, owned: Callable[[], set[int]], ok: Callable[[int], bool]) -> None:
        """Renew the stamp of every partition this worker holds now (``owned``) whose lease
        holds (``ok``: a process resumed from a pause must not stamp a partition it lost):
        a partition held but not written for hours is current all the same. The worker
        calls it at each sweep."""
        for partition in owned():
            if ok(partition):
                self.touch(partition)

    def _stale(self, store: KeyPartitionedRocksStore, tp: TP) -> bool:
        """``tp``'s local store holds data (a persisted offset) that was last current longer
        than ``stale_after_s`` (:data:`STALE_STORE_S` unless the changelog keeps its
        tombstones less) ago — or at a time not known — and this worker did not
        hold the partition in the generation before this one (a kept partition's store is
        current whatever its age: every write to it was this worker's)."""
        partition = tp.partition
        generation = self.generation() if self.generation is not None else None
        if generation is not None and self.held is not None and \
                self.held(partition, generation - 1):
            return False
        if RocksStore.persisted_offset(store, tp) is None:
            return False  # nothing in it to be stale
        path = self._current_file(partition)
        try:
            age = time.time() - path.stat().st_mtime if path is not None else None
        except OSError:
            age = None
        if age is not None and age < self.stale_after_s:
            return False
        log.warning("table %s: partition %d's local store was last current %s; the "
                    "changelog may have dropped deletions since (compaction): it is read "
                    "again from the changelog's start", self.name, partition,
                    "at a time not known" if age is None else f"{age / 3600:.1f} h ago",
                    extra={"partition": partition})
        return True

    def _held_since_suspects(self, partition: int) -> bool:
        """Every flush that marked ``partition`` for a rebuild was written in a generation
        the lease says this worker has held it since, without a break (it keeps the
        partition now). Its flush could not tell whose records were the late ones (the
        lease did not answer then: a rebalance under way, heartbeats stale) — now it can:
        no other worker held the partition since those records were written, so they were
        not late, and its store is the partition's truth (the held rule). A rebuild would
        only take the other writer's late records, applied after ours in offset order; the
        repair would then find nothing to rewrite (decision 0016)."""
        generations, held = self._marked.get(partition, set()), self.held
        return bool(generations) and held is not None and \
            all(held(partition, g) for g in generations)

    def _kept_suspects(self, partition: int) -> None:
        generations = self._marked.pop(partition, set())
        self._rebuild.discard(partition)
        mine = self._suspects.get(partition, {})
        for offset in [o for o, g in mine.items() if g in generations]:
            del mine[offset]
        if not mine:
            self._suspects.pop(partition, None)
        # the restore in place hands everything past the store's offset to the repair (the
        # held rule), not only what follows the flush's records: that flush's repair job
        # may have given up waiting for this very rebalance (the repair compares again, so
        # a range looked at twice is rewritten at most once)
        self._tail.pop(partition, None)
        log.info("table %s: changelog partition %d held without a break since generation "
                 "%d: the records of ours a flush met another writer's among were not late; "
                 "its local store is kept, not rebuilt", self.name, partition,
                 min(generations), extra={"partition": partition})

    def _suspect(self, partition: int, offsets: list[int], generation: int) -> None:
        self._rebuild.add(partition)
        self._marked.setdefault(partition, set()).add(generation)
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


# mode names a service's logger after its class's module: keep faust's (common.log quietens
# it; WORKER_FAUST_LOG_LEVEL), set after the class (mode replaces one set in its body)
RestoreGuards.logger = faust.Table.logger


CONTRACT.update({
    # the stamp: a changelog event's message carries the record's headers
    "R faust aiokafka Consumer._to_message (headers: the stamp)": (
        AIOKafkaDriverConsumer, "_to_message", "7c24f6511b2fcef7cbfe73526e78de03"),
    "S faust Collection.apply_changelog_batch": (
        faust.Table, "apply_changelog_batch", "b980a78d3ae9b1e87f2d3fb63e0dcd26"),
    # the rebuild of a partition's store: faust's recovery asks each assigned partition's
    # persisted offset of the table when it adds it
    "S faust Collection.persisted_offset": (
        faust.Table, "persisted_offset", "d473d3ab3fd6f036d974d0abe3d485a1"),
    "R faust Recovery._add": (Recovery, "_add", "1584a197b11bf835c0e3c497952413ce"),
    # ... every assigned active partition at every rebalance, kept partitions included
    "R faust Recovery.on_rebalance": (
        Recovery, "on_rebalance", "aa4d997a1795ceae3880f98311b46935"),
    # apply_changelog_batch (DurableTable's super()), _persist_read: each record into its own
    # partition's DB (KeyPartitionedRocksStore), the persisted offset the last one applied
    "R faust rocksdb Store.apply_changelog_batch": (
        RocksStore, "apply_changelog_batch", "ea3344d369fc4ab5e3cdace305656911"),
    # _floor: records fetched past a restore's end, buffered, applied at the next revocation
    "R faust Recovery._slurp_changelogs": (Recovery, "_slurp_changelogs", "7825c7e50f766d5ab0fd246b63420ea0"),
    "R faust Recovery.flush_buffers": (Recovery, "flush_buffers", "6fa9c17f1071018c49cb6d411a34fb4a"),
    # _floor's "at or below": a restore seeks to the persisted offset itself (-1: to 0), so
    # the record at it is read again
    "R faust Recovery._seek_offsets": (
        Recovery, "_seek_offsets", "19598ca63d94d250e49d2dfe48a3c48e"),
})
