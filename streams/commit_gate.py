"""The commit gate: faust may not commit an offset of the requests topic past a record that
the agent has not finished.

The hole it closes (faust-streaming 0.15.3, ``faust.transport.consumer``): faust commits the
highest offset below which every offset is either acked or part of a registered "gap". A gap
is what ``_drain_messages`` sees between two consecutive messages of a partition — meant for
the transaction markers (and aborted records) that a consumer never receives. But faust also
*drops* records that aiokafka has already handed over — records of a partition that is not
active at that instant, the rest of a fetch when the generation changes or the flow stops,
a callback abandoned when the flow is suspended — and never seeks back. The next record it
does deliver opens a "gap" over the dropped ones, the gap is committed past, and those events
are lost. In the two-worker crash test a survivor lost 10 events this way (2 runs in 15).
Separately, ``_new_offset`` accepts a single missing offset right after the committed one
(for a marker) without asking whether it was a marker.

The gate does not try to fix each drop. It checks the invariant they all break, on every
commit of a requests partition, against the log itself:

* the agent reports each event it finished (:meth:`CommitGate.finished`: outcome or dead
  letter acknowledged by the broker);
* before faust commits offset ``N``, a reader with its own confluent-kafka clients (in a
  thread) lists the committed records in ``[group's committed offset, N)`` —
  ``read_committed``, so markers and aborted records are not records;
* the commit goes only up to the first record the agent did not finish, and that partition
  is sought back to it before faust's next fetch (so the record comes again now, not at the
  next rebalance). A check that cannot be made holds the commit: a commit can always wait.

Costs one OffsetFetch and one read of the records being committed per commit (faust commits
every ``broker_commit_interval`` = 1 s): 25 ms mean for ~1,000 records over 6 partitions
(``python -m bench.commit_gate``), off the agent's path. Installed by
:class:`streams.app.Worker` with :func:`install`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from common.connection import Connectable, kafka_config
from streams import metrics

log = logging.getLogger(__name__)

# partition → end offset N wanted  ⟶  partition → (group's committed offset, record offsets
# in [committed, N))
RangeReader = Callable[[Mapping[int, int]], dict[int, tuple[int, list[int]]]]


def safe_commit(base: int, wanted: int, records: list[int], finished: set[int]) -> int:
    """The highest offset ≤ ``wanted`` that commits no unfinished record: the first record in
    ``[base, wanted)`` not in ``finished``, else ``wanted``."""
    for offset in records:
        if base <= offset < wanted and offset not in finished:
            return offset
    return wanted


class CommitGate:
    """Per requests partition: the offsets the agent finished, and the check before a commit."""

    def __init__(self, topic: str, reader: RangeReader) -> None:
        self.topic = topic
        self.reader = reader
        self._finished: dict[int, set[int]] = {}
        self.pending_seeks: dict[Any, int] = {}  # TP → offset, applied before the next fetch
        self.holds = 0

    def finished(self, partition: int, offset: int) -> None:
        self._finished.setdefault(partition, set()).add(offset)

    def retained_count(self) -> int:
        """Finished offsets still held (not yet below a committed offset)."""
        return sum(len(s) for s in self._finished.values())

    async def check(self, wanted: Mapping[Any, int]) -> dict[Any, int]:
        """TP → the offset that may be committed (TPs that may not move are left out)."""
        by_partition = {tp.partition: offset for tp, offset in wanted.items()}
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        try:
            found = await loop.run_in_executor(None, self.reader, by_partition)
            metrics.COMMIT_CHECK.observe(time.monotonic() - started)
        except Exception as exc:  # noqa: BLE001 - a commit can wait; the next one re-checks
            log.warning("commit gate: cannot read the requests topic (%s: %s); commit held",
                        type(exc).__name__, exc)
            metrics.COMMIT_HOLDS.labels("check_failed").inc()
            return {}
        allowed: dict[Any, int] = {}
        for tp, offset in wanted.items():
            if tp.partition not in found:
                continue
            base, records = found[tp.partition]
            done = self._finished.get(tp.partition, set())
            safe = safe_commit(base, offset, records, done)
            if safe < offset:
                missing = [o for o in records if safe <= o < offset and o not in done]
                self.holds += 1
                metrics.COMMIT_HOLDS.labels("unfinished_record").inc()
                log.warning("commit gate: faust would commit partition %d to %d past %d "
                            "record(s) the agent never finished (first %d); committing to "
                            "%d and seeking back", tp.partition, offset, len(missing), safe,
                            safe, extra={"partition": tp.partition, "offset": safe,
                                         "count": len(missing)})
                self.pending_seeks[tp] = safe
            if safe > base:
                allowed[tp] = safe
        return allowed

    def committed(self, offsets: Mapping[Any, int]) -> None:
        """Forget finished offsets below what the broker now holds as committed."""
        for tp, offset in offsets.items():
            done = self._finished.get(tp.partition)
            if done:
                done.difference_update([o for o in done if o < offset])


def install(gate: CommitGate, consumer: Any) -> None:
    """Put ``gate`` in front of ``consumer._commit_offsets`` and apply its seeks between
    fetches (never while faust iterates a fetched batch: its read offsets would then skip
    the records the seek brings back)."""
    original_commit = consumer._commit_offsets
    original_getmany = consumer.getmany

    async def _commit_offsets(offsets: Mapping[Any, int], *args: Any, **kwargs: Any) -> bool:
        ours = {tp: o for tp, o in offsets.items() if tp.topic == gate.topic}
        if not ours:
            return await original_commit(offsets, *args, **kwargs)
        allowed = await gate.check(ours)
        offsets = {**{tp: o for tp, o in offsets.items() if tp.topic != gate.topic},
                   **allowed}
        if not offsets:
            return False
        did_commit = await original_commit(offsets, *args, **kwargs)
        if did_commit:
            gate.committed(allowed)
        return did_commit

    async def getmany(timeout: float) -> Any:
        if gate.pending_seeks:
            seeks, gate.pending_seeks = gate.pending_seeks, {}
            assignment = consumer.assignment()
            for tp, offset in seeks.items():
                if tp in assignment:
                    await consumer.seek(tp, offset)
        async for item in original_getmany(timeout):
            yield item

    consumer._commit_offsets = _commit_offsets
    consumer.getmany = getmany


def broker_reader(bootstrap: Connectable, group: str, topic: str,
                  timeout_s: float = 10.0) -> RangeReader:
    """A :data:`RangeReader` with its own clients (never the worker's faust consumer);
    ``bootstrap``: the worker's KafkaConnection (or a plaintext address)."""
    from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
    from confluent_kafka.admin import AdminClient

    from common.lag import committed_record_offsets, new_range_consumer

    admin = AdminClient(kafka_config(bootstrap))
    consumer = new_range_consumer(bootstrap, f"{group}-commit-gate")
    lock = threading.Lock()

    def read(wanted: Mapping[int, int]) -> dict[int, tuple[int, list[int]]]:
        with lock:
            request = ConsumerGroupTopicPartitions(
                group, [TopicPartition(topic, p) for p in wanted])
            result = admin.list_consumer_group_offsets([request])[group].result(
                timeout=timeout_s)
            bases = {}
            for tp in result.topic_partitions:
                if tp.offset >= 0:
                    bases[tp.partition] = tp.offset
                else:  # never committed: from the partition's beginning
                    low, _ = consumer.get_watermark_offsets(
                        TopicPartition(topic, tp.partition), timeout=timeout_s)
                    bases[tp.partition] = low
            ranges = {p: (bases[p], end) for p, end in wanted.items() if p in bases}
            records = committed_record_offsets(consumer, topic, ranges, timeout_s=timeout_s)
            return {p: (bases[p], records[p]) for p in ranges}
    return read
