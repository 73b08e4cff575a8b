"""The checkpoint: what of the requests topic may be committed, and the commit itself.

Events reach their Orders' lanes in offset order per partition but finish in any order. An
offset may be committed only when every event before it is finished (its outcome or dead
letter acknowledged by the broker, or decided to need nothing). :meth:`Checkpoint.commit`
does it in four steps, numbered in the code:

1. **candidate** per partition: the lowest event still unfinished (a hung WHMCS call holds
   its own partition's commit point here, and nothing else), or past the highest finished
   event when none is unfinished;
2. **check against the log**: a ``read_committed`` reader with its own clients lists the
   records between the group's committed offset (or the log start, when retention passed
   it) and the candidate; the commit stops at the first record this worker never finished —
   one faust fetched and dropped without handing it over (``docs/decisions/0003``) — and the
   partition is sought back to it before the next fetch. A check that cannot be made holds the commit: a commit can always wait;
3. **commit** what passed, through the consumer, in the current generation (partitions no
   longer assigned are skipped);
4. **forget** the finished offsets below what is now committed.

A rebalance (:meth:`Checkpoint.reset`) starts every partition afresh: faust seeks to the
committed offsets and redelivers what follows, and a finish reported for an event admitted
before the reset is ignored (its ``epoch`` is old).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field

from common.connection import Connectable
from streams import metrics

log = logging.getLogger(__name__)

# partition → end offset wanted  ⟶  partition → (group's committed offset — the log start when
# that is later —, record offsets in [that, end))
RangeReader = Callable[[Mapping[int, int]], dict[int, tuple[int, list[int]]]]


@dataclass
class _Partition:
    epoch: int = 0
    unfinished: set[int] = field(default_factory=set)
    finished: set[int] = field(default_factory=set)  # above the last commit
    highest: int = -1  # highest finished offset
    committed: int | None = None  # what this worker last committed (None: not yet)

    def candidate(self) -> int | None:
        if self.unfinished:
            return min(self.unfinished)
        return self.highest + 1 if self.highest >= 0 else None

    def span(self) -> int:
        """Offsets between the commit point and the newest admitted event (memory bound):
        finished ones count too — behind one hung event the finished events are what the
        window holds in memory (counted to the newest unfinished one only, the span fell to
        1 as they finished and the partition was resumed at once, without bound)."""
        newest = max(max(self.unfinished, default=-1), self.highest)
        if newest < 0:
            return 0
        low = self.committed if self.committed is not None else \
            min(self.unfinished | self.finished, default=newest)
        return max(0, newest + 1 - low)


def safe_commit(base: int, wanted: int, records: list[int], finished: set[int]) -> int:
    """The highest offset ≤ ``wanted`` that commits no unfinished record: the first record in
    ``[base, wanted)`` not in ``finished``, else ``wanted``."""
    for offset in records:
        if base <= offset < wanted and offset not in finished:
            return offset
    return wanted


class Checkpoint:
    def __init__(self, reader: RangeReader, *,
                 commit: Callable[[Mapping[int, int]], Awaitable[bool]],
                 seek: Callable[[int, int], None]) -> None:
        self._reader, self._commit, self._seek = reader, commit, seek
        self._parts: dict[int, _Partition] = {}
        self._lock = asyncio.Lock()  # one commit at a time
        self.holds = 0
        self.commits = 0
        self.sought_back: set[int] = set()  # partitions sought back since the lanes asked

    def _part(self, partition: int) -> _Partition:
        return self._parts.setdefault(partition, _Partition())

    # -- what the lanes report -------------------------------------------------------------

    def admitted(self, partition: int, offset: int) -> int:
        """An event enters the worker; returns the epoch to give back to :meth:`finished`."""
        part = self._part(partition)
        if offset not in part.finished:
            part.unfinished.add(offset)
        return part.epoch

    def finished(self, partition: int, offset: int, epoch: int) -> None:
        part = self._part(partition)
        if epoch != part.epoch:
            return  # admitted before a rebalance: its redelivered copy counts
        part.unfinished.discard(offset)
        part.finished.add(offset)
        part.highest = max(part.highest, offset)

    def reset(self) -> None:
        """A rebalance: every partition starts afresh from its committed offset."""
        for part in self._parts.values():
            part.epoch += 1
            part.unfinished.clear()
            part.finished.clear()
            part.highest = -1
            part.committed = None

    def span(self, partition: int) -> int:
        part = self._parts.get(partition)
        return part.span() if part else 0

    def unfinished(self) -> int:
        return sum(len(p.unfinished) for p in self._parts.values())

    async def committed_offsets(self, partitions: Iterable[int]) -> dict[int, int]:
        """partition → the first offset of the requests topic a consumer of the group is
        given next (:meth:`BrokerRangeReader.redeliverable_from`: the committed offset, or
        the log start when later): every record below it finished or gone, none at or above
        it committed past. Read from the broker in a thread; raises when the brokers do not
        answer. A reader without that method (tests): the committed offsets its range read
        gives."""
        wanted = sorted(set(partitions))
        if not wanted:
            return {}
        loop = asyncio.get_running_loop()
        starts = getattr(self._reader, "redeliverable_from", None)
        if starts is not None:
            return dict(await loop.run_in_executor(None, starts, wanted))
        found = await loop.run_in_executor(None, self._reader, dict.fromkeys(wanted, 0))
        return {p: base for p, (base, _records) in found.items()}

    # -- the commit ------------------------------------------------------------------------

    async def commit(self) -> dict[int, int]:
        """One commit (see the module docstring); returns what was committed."""
        async with self._lock:
            # 1. candidates: the contiguous prefix of finished events per partition
            wanted = {p: c for p, part in self._parts.items()
                      if (c := part.candidate()) is not None
                      and (part.committed is None or c > part.committed)}
            if not wanted:
                return {}
            epochs = {p: self._parts[p].epoch for p in wanted}
            # 2. check against the log (in a thread: it reads the broker)
            started = time.monotonic()
            try:
                found = await asyncio.get_running_loop().run_in_executor(
                    None, self._reader, wanted)
                metrics.COMMIT_CHECK.observe(time.monotonic() - started)
            except Exception as exc:  # noqa: BLE001 - a commit can wait; the next re-checks
                log.warning("checkpoint: cannot read the requests topic (%s: %s); commit held",
                            type(exc).__name__, exc)
                metrics.COMMIT_HOLDS.labels(metrics.COMMIT_HOLD_REASONS[0]).inc()
                return {}
            allowed: dict[int, int] = {}
            for partition, offset in wanted.items():
                part = self._parts[partition]
                if partition not in found or part.epoch != epochs[partition]:
                    continue  # a rebalance meanwhile: start again next time
                base, records = found[partition]
                safe = safe_commit(base, offset, records, part.finished)
                if safe < offset:
                    self._hold(partition, offset, safe, records, part.finished)
                if safe > base:
                    allowed[partition] = safe
            # 3. commit what passed
            if not allowed or not await self._commit(allowed):
                return {}
            # 4. forget what is committed
            for partition, offset in allowed.items():
                part = self._parts[partition]
                if part.epoch != epochs[partition]:
                    continue
                part.committed = offset
                part.finished = {o for o in part.finished if o >= offset}
            self.commits += 1
            return allowed

    def _hold(self, partition: int, wanted: int, safe: int, records: list[int],
              finished: set[int]) -> None:
        missing = [o for o in records if safe <= o < wanted and o not in finished]
        self.holds += 1
        metrics.COMMIT_HOLDS.labels(metrics.COMMIT_HOLD_REASONS[1]).inc()
        log.warning("checkpoint: partition %d would be committed to %d past %d record(s) the "
                    "worker never finished (first %d); committing to %d and seeking back",
                    partition, wanted, len(missing), safe, safe,
                    extra={"partition": partition, "offset": safe, "count": len(missing)})
        self._seek(partition, safe)
        self.sought_back.add(partition)


class BrokerRangeReader:
    """A :data:`RangeReader` with its own clients (never the worker's faust consumer):
    the group's committed offsets read as a consumer would, and a ``read_committed`` range
    consumer. ``close()`` closes both (a client left open outlives its broker and logs
    connection failures until the process ends)."""

    def __init__(self, bootstrap: Connectable, group: str, topic: str,
                 timeout_s: float = 10.0) -> None:
        from common.lag import group_reader, new_range_consumer

        self.topic, self.timeout_s = topic, timeout_s
        self._offsets = group_reader(bootstrap, group)
        self._consumer = new_range_consumer(bootstrap, f"{group}-checkpoint")
        self._lock = threading.Lock()

    def __call__(self, wanted: Mapping[int, int]) -> dict[int, tuple[int, list[int]]]:
        from confluent_kafka import TopicPartition

        from common.lag import committed_offsets, committed_record_offsets

        topic, timeout_s = self.topic, self.timeout_s
        with self._lock:
            bases = {}
            for partition, offset in committed_offsets(self._offsets, topic, wanted,
                                                       timeout=timeout_s).items():
                # from the committed offset, or the log start when that is later (retention
                # or kafka-delete-records removed the records between: a read below it
                # starts at it) or the group never committed there
                low, _ = self._consumer.get_watermark_offsets(
                    TopicPartition(topic, partition), timeout=timeout_s)
                bases[partition] = max(offset, low)
            ranges = {p: (bases[p], end) for p, end in wanted.items() if p in bases}
            records = committed_record_offsets(self._consumer, topic, ranges,
                                               timeout_s=timeout_s)
            return {p: (bases[p], records[p]) for p in ranges}

    def redeliverable_from(self, partitions: Iterable[int]) -> dict[int, int]:
        """partition → the first offset of the requests topic a consumer of the group is
        given next: the group's committed offset, or the partition's log start when that is
        later (retention or ``kafka-delete-records`` removed the records between) or the
        group never committed there. A record below it is never delivered again."""
        from confluent_kafka import TopicPartition

        from common.lag import committed_offsets

        topic, timeout_s = self.topic, self.timeout_s
        with self._lock:
            out = {}
            for partition, offset in committed_offsets(self._offsets, topic, partitions,
                                                       timeout=timeout_s).items():
                low, _ = self._consumer.get_watermark_offsets(
                    TopicPartition(topic, partition), timeout=timeout_s)
                out[partition] = max(offset, low)
            return out

    def close(self) -> None:
        with self._lock:
            for client in (self._consumer, self._offsets):
                with contextlib.suppress(Exception):  # already closed
                    client.close()


def broker_reader(bootstrap: Connectable, group: str, topic: str,
                  timeout_s: float = 10.0) -> BrokerRangeReader:
    """The worker's :data:`RangeReader` (:class:`BrokerRangeReader`)."""
    return BrokerRangeReader(bootstrap, group, topic, timeout_s)
