"""Late records of a partition's earlier owner, rewritten over so that the owner's come last.

A worker cut off from the brokers, or paused, keeps the table writes it made while its lease
held in its producer's buffers and on the wire; after the heal they land in the changelog
*after* the writes of the worker that owns the partition by then (decision 0014). The
owner's store never applies them, but the changelog now ends, for those Orders, with the
old owner's values: whoever restores the partition next (the owner after a crash, the next
owner after a rebalance) applies them last — a decided outcome marked unsent, sent again
with other fields; an intent pending again — and compaction keeps them over the owner's.

The owner sees them: a flush whose acknowledged offsets do not follow the last record it
looked at has another writer's records among its own (:class:`streams.faust_seam.DurableTable`
tells ``on_foreign``). :class:`ChangelogRepair` then reads that offset range back, and for
every Order whose last record there is not what the owner's store holds, sends the store's
value again (a tombstone where the store holds nothing) and makes it durable with the next
group commit. The changelog ends with the owner's values again; a restore after that applies
the late records and then the owner's over them.

Only the owner may do this, and only for records it can prove it did not write while
someone else owned the partition: the repair runs while :class:`streams.lease.OwnershipLease`
answers for the partition *in the generation the flush's first record was written in* —
ownership unbroken from before those records were sent until the rewrite. A worker that was
itself the one cut off (its own late records among the new owner's) finds its lease lost
and rewrites nothing. Why the owner's store is the truth: every WHMCS write of the earlier
owner was made under its lease, after its intent was acknowledged, so before this owner was
assigned and restored (:mod:`streams.lease`); a record that lands after that restore carries
nothing the owner must know.

At each sweep (:meth:`ChangelogRepair.check_idle`) a partition gone quiet is compared with its
end offset: late records that landed after the owner's last flush are found there.

What it cannot mend (docs/decisions/0016): late records in a partition that moves on before
the owner's next flush or sweep, or that the owner has not written to since it restored it;
an owner that crashes between the late records' landing and its rewrite's acknowledgement.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple, Protocol

from streams import metrics
from streams.faust_seam import CLAIM_KEY
from streams.lease import Fenced, OwnershipLease

log = logging.getLogger(__name__)

_CLAIM = CLAIM_KEY.encode()

# (changelog topic, partition, first offset, last offset) → the last value of each key
# in that range (None: a tombstone), read by a client of its own; blocking
RangeRead = Callable[[str, int, int, int], dict[bytes, bytes | None]]


class RepairableTable(Protocol):
    name: str

    def stored(self, key: str) -> bytes | None: ...

    def rewrite(self, key: str) -> None: ...

    def idle_tails(self) -> dict[int, tuple[int, int | None]]: ...

    def looked_at(self, partition: int, offset: int, *, late: bool = False) -> None: ...

    @property
    def changelog_topic(self) -> Any: ...


class _Range(NamedTuple):
    """A range of another writer's records among a table's own (:meth:`ChangelogRepair.foreign`)."""

    table: RepairableTable
    partition: int
    start: int
    end: int
    generation: int | None  # the generation the flush that met them was written in
    attempt: int = 1

    def what(self) -> str:
        return f"offsets {self.start}-{self.end}"


class _Skipped(NamedTuple):
    """Keys a restore of ours left records out for (:meth:`ChangelogRepair.skipped`)."""

    table: RepairableTable
    partition: int
    keys: list[str]
    generation: int | None = None  # the generation the restore ran in
    attempt: int = 1

    def what(self) -> str:
        return f"{len(self.keys)} key(s) a restore left records out for"


class ChangelogRepair:
    """Told of foreign records by the tables (:meth:`foreign`), repairs them one range at a
    time on the event loop; the range is read on a thread (``read`` blocks). ``commit`` is
    the worker's group commit. ``wait_s``: how long a range waits for the lease to answer
    (a rebalance under way, heartbeats not accepted lately) before the attempt fails. A job
    that fails (the lease did not answer, the range's read timed out: a broker failing
    over) is tried again
    ``retry_s`` later, ``attempts`` times in all, after the others queued meanwhile; both
    steps are idempotent (the range is read again, the owner's values compared again)."""

    def __init__(self, lease: OwnershipLease, read: RangeRead,
                 commit: Callable[[], Awaitable[None]], *, wait_s: float = 30.0,
                 busy: Callable[[], bool] = lambda: False, attempts: int = 3,
                 retry_s: float = 5.0) -> None:
        self._lease, self._read, self._commit = lease, read, commit
        self.wait_s = wait_s
        self.attempts, self.retry_s = attempts, retry_s
        self._busy = busy
        self._queue: deque[_Range | _Skipped] = deque()  # what to look at, in turn
        self._task: asyncio.Task[None] | None = None
        self.rewritten = 0  # keys sent again, in all
        self.given_up = 0  # ranges not repaired (the lease lost, or no answer)

    def foreign(self, table: RepairableTable, partition: int, start: int, end: int,
                generation: int | None) -> bool:
        """Offsets ``start``..``end`` of ``table``'s changelog ``partition`` hold another
        writer's records among a flush of ours whose first record was written in
        ``generation``. Called from the flush; the repair runs after it. True when this
        worker has owned the partition since then, as far as the lease knows now: the other
        records are an earlier owner's late ones, which the store must never apply (a
        restore in place after the next rebalance would: the table's persisted offset may
        move past them)."""
        metrics.CHANGELOG_FOREIGN.labels(table.name).inc()
        self._queue.append(_Range(table, partition, start, end, generation))
        self._start()
        return generation is not None and self._lease.check(partition, generation).ok

    def skipped(self, table: RepairableTable, partition: int, keys: list[str]) -> None:
        """A restore of ``table``'s changelog ``partition`` left out records of this worker's
        own for ``keys`` (they landed after another worker's claim; the table tells). The
        changelog still ends with them for whoever restores it next: once this worker owns
        the partition, with no rebalance or restore under way, its values of ``keys`` are
        sent again. A restore of a partition that is not ours (a standby's) sends nothing:
        its owner meets those records itself."""
        generation = self._lease.generation
        if generation is None:
            generation = self._lease.last_generation
        self._queue.append(_Skipped(table, partition, keys, generation))
        self._start()

    def _start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._run())

    async def check_idle(self, tables: list[RepairableTable],
                         high: Callable[[str, int], int]) -> int:
        """Late records that landed after a table's last flush, which no flush of ours met
        (a partition gone quiet): for each partition whose last record of ours this worker
        has owned since, records past it (``high``: a partition's end offset, blocking) are
        another writer's. Run at each sweep. Returns how many ranges it found."""
        loop = asyncio.get_running_loop()
        found = 0
        for table in tables:
            topic = table.changelog_topic.get_topic_name()
            for partition, (tail, generation) in table.idle_tails().items():
                if generation is None or not self._lease.check(partition, generation).ok:
                    continue
                end = await loop.run_in_executor(None, high, topic, partition)
                if table.idle_tails().get(partition) != (tail, generation):
                    continue  # written meanwhile: that flush looks at them itself
                if end - 1 > tail:
                    late = self.foreign(table, partition, tail + 1, end - 1, generation)
                    table.looked_at(partition, end - 1, late=late)
                    found += 1
        return found

    async def idle(self) -> None:
        """Return once every range told so far is repaired or given up (tests)."""
        while self._task is not None and not self._task.done():
            await asyncio.shield(self._task)

    async def _run(self) -> None:
        while self._queue:
            job = self._queue.popleft()
            table, partition = job.table, job.partition
            try:
                if isinstance(job, _Skipped):
                    await self._rewrite_skipped(table, partition, job.keys, job.generation)
                else:
                    await self._repair(table, partition, job.start, job.end, job.generation)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the next foreign range is tried all the same
                if job.attempt < self.attempts:
                    log.warning("table %s: repairing changelog partition %d (%s) failed "
                                "(attempt %d/%d: %r); tried again in %g s", table.name,
                                partition, job.what(), job.attempt, self.attempts, exc,
                                self.retry_s)
                    await asyncio.sleep(self.retry_s)
                    self._queue.append(job._replace(attempt=job.attempt + 1))
                    continue
                self.given_up += 1
                metrics.CHANGELOG_REPAIRS.labels(table.name, "failed").inc()
                log.exception("table %s: repairing changelog partition %d (%s) failed, "
                              "attempt %d/%d; given up", table.name, partition, job.what(),
                              job.attempt, self.attempts)

    async def _owned(self, table: RepairableTable, partition: int, start: int, end: int,
                     generation: int | None, *, what: str = "") -> bool:
        what = what or f"has another writer's records among ours (offsets {start}-{end})"
        why = ""
        if generation is None:
            why = "its records were written outside an assignment"
        else:
            try:
                await self._settled(partition, generation)
                return True
            except Fenced as exc:
                why = str(exc.check.reason)
            except TimeoutError:
                # not a loss of the partition: tried again as a failed read is (the flush
                # may have moved the persisted offset past the range already, so no later
                # restore looks at it again), and counted failed once given up
                raise TimeoutError(f"the lease did not answer within {self.wait_s:g} s (a "
                                   "rebalance or a restore under way, or the brokers "
                                   "away)") from None
        self.given_up += 1
        metrics.CHANGELOG_REPAIRS.labels(table.name, "not_owner").inc()
        log.info("table %s: changelog partition %d %s; not repaired: %s", table.name,
                 partition, what, why)
        return False

    async def _settled(self, partition: int, generation: int) -> None:
        """Return once the lease holds for ``partition`` since ``generation`` and no
        rebalance or restore is under way (a table being restored does not hold yet what
        its changelog does: compared now, it would look stale); Fenced once it is lost.
        TimeoutError once the lease has not answered for ``wait_s`` while nothing was
        restored (the brokers away): a restore, however long — a rebuild from the start —
        is waited out, not counted (a range given up while the worker kept its partition is
        never looked at again)."""
        unanswered, step = 0.0, 0.05
        while True:
            check = self._lease.check(partition, generation)
            if check.lost:
                raise Fenced(check, stage="a changelog repair")
            busy = self._busy()
            if check.ok and not busy:
                return
            if not busy:
                unanswered += step
                if unanswered >= self.wait_s:
                    raise TimeoutError
            await asyncio.sleep(step)

    async def _repair(self, table: RepairableTable, partition: int, start: int, end: int,
                      generation: int | None) -> None:
        if not await self._owned(table, partition, start, end, generation):
            return
        topic = table.changelog_topic.get_topic_name()
        last = await asyncio.get_running_loop().run_in_executor(
            None, self._read, topic, partition, start, end)
        if not await self._owned(table, partition, start, end, generation):
            return
        stale: list[str] = []
        for key, value in last.items():
            try:
                text = key.decode()
            except UnicodeDecodeError:  # no Order's (the restore leaves it out too)
                log.error("changelog repair of %s partition %d: a key that is not UTF-8 text "
                          "(%r), no Order's; passed over", topic, partition, key[:40])
                continue
            if key != _CLAIM and table.stored(text) != value:
                stale.append(text)
        for order_id in stale:
            table.rewrite(order_id)
        if stale:
            await self._commit()
        self.rewritten += len(stale)
        metrics.CHANGELOG_REPAIRS.labels(table.name, "repaired").inc()
        metrics.CHANGELOG_REWRITES.labels(table.name).inc(len(stale))
        # a warning only where the changelog ended otherwise than the store: nothing to
        # mend (the other writer's records said what ours did) is a line of information
        log.log(logging.WARNING if stale else logging.INFO,
                "table %s: changelog partition %d had another writer's records among ours "
                "(offsets %d-%d, %d keys); %d key(s) whose last record there was not ours "
                "sent again", table.name, partition, start, end, len(last), len(stale),
                extra={"partition": partition, "count": len(stale)})

    async def _rewrite_skipped(self, table: RepairableTable, partition: int,
                               keys: list[str], generation: int | None) -> None:
        # held since the restore's generation, with no restore under way (waited out,
        # however long: a rebalance at a deadline dropped these keys for good)
        what = (f"still ends, for {len(keys)} key(s), with late records a restore left out")
        if not await self._owned(table, partition, -1, -1, generation, what=what):
            return
        for key in keys:
            table.rewrite(key)
        await self._commit()
        self.rewritten += len(keys)
        metrics.CHANGELOG_REPAIRS.labels(table.name, "repaired").inc()
        metrics.CHANGELOG_REWRITES.labels(table.name).inc(len(keys))
        log.info("table %s: changelog partition %d: %d key(s) a restore left late records "
                 "out for sent again (their values as restored)", table.name, partition,
                 len(keys), extra={"partition": partition, "count": len(keys)})




class ChangelogReader:
    """A :data:`RangeRead` with a ``read_committed`` range consumer of its own, made at the
    first read (most workers never need one). ``close()`` closes it."""

    def __init__(self, bootstrap: Any, group: str, timeout_s: float = 10.0) -> None:
        self._bootstrap, self._group, self.timeout_s = bootstrap, group, timeout_s
        self._consumer: Any = None
        self._lock = threading.Lock()

    def __call__(self, topic: str, partition: int, start: int, end: int
                 ) -> dict[bytes, bytes | None]:
        from common.lag import range_records

        with self._lock:
            last: dict[bytes, bytes | None] = {}
            for msg in range_records(self._client(), topic, {partition: (start, end + 1)},
                                     timeout_s=self.timeout_s):
                last[msg.key()] = msg.value()
            return last

    def high(self, topic: str, partition: int) -> int:
        """The end offset of ``topic``'s ``partition`` (the offset its next record gets)."""
        from confluent_kafka import TopicPartition

        with self._lock:
            _low, end = self._client().get_watermark_offsets(
                TopicPartition(topic, partition), timeout=self.timeout_s)
            return int(end)

    def _client(self) -> Any:
        from common.lag import new_range_consumer

        if self._consumer is None:
            self._consumer = new_range_consumer(self._bootstrap, f"{self._group}-repair")
        return self._consumer

    def close(self) -> None:
        with self._lock:
            if self._consumer is not None:
                with contextlib.suppress(Exception):  # already closed
                    self._consumer.close()
                self._consumer = None
