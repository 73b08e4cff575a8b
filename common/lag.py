"""Consumer-group lag that counts records, not offsets.

The requests topic is written in transactions, so its end offset also counts the commit
markers: "end − committed" says 1 when nothing is left. :func:`group_lag` reads the few
offsets in between (up to :data:`EXACT_LAG_LIMIT`) and counts only committed records. Used by
``sfprov lag``/``replay`` and by the worker's stall watchdog.
"""

from __future__ import annotations

import time
from collections.abc import Generator, Iterable
from typing import Any, NamedTuple

from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient

from common.connection import Connectable, kafka_config
from common.errors import KafkaError as PipelineKafkaError

EXACT_LAG_LIMIT = 1000


def end_offsets(c: Any, topic: str, timeout: float = 10.0) -> dict[int, tuple[int, int]]:
    """partition → (low, high) watermarks; :class:`~common.errors.KafkaError` when the topic
    does not exist or cannot be described (not SystemExit: a library call in a thread — the
    connector's reconciler — ended that thread silently)."""
    md = c.list_topics(topic, timeout=timeout)
    if topic not in md.topics or md.topics[topic].error is not None:
        error = md.topics[topic].error if topic in md.topics else None
        raise PipelineKafkaError(f"topic {topic} does not exist" if error is None
                                 else f"topic {topic}: {error.str()}")
    out = {}
    for p in md.topics[topic].partitions:
        out[p] = _watermarks(c, TopicPartition(topic, p), timeout)
    return out


#: attempts at a partition's watermarks answered with a retriable error (a leader moving,
#: a new topic's leader not yet known to the node asked): a CI run saw NOT_LEADER_FOR_PARTITION
WATERMARK_ATTEMPTS = 3
_LEADER_MOVING = frozenset({KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE,
                            KafkaError.REQUEST_TIMED_OUT, KafkaError._TRANSPORT})


def _watermarks(c: Any, tp: TopicPartition, timeout: float) -> tuple[int, int]:
    for attempt in range(WATERMARK_ATTEMPTS):
        try:
            low, high = c.get_watermark_offsets(tp, timeout=timeout)
            return low, high
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            # the binding's error carries no retriable flag: told by its code
            if attempt + 1 == WATERMARK_ATTEMPTS or not isinstance(err, KafkaError) or not (
                    err.retriable() or err.code() in _LEADER_MOVING):
                raise
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")


def group_reader(target: Connectable, group: str, **extra: Any) -> Any:
    """A consumer that only reads ``group``'s committed offsets (:func:`committed_offsets`):
    it never subscribes, so it never joins the group, and it commits nothing. ``extra``:
    more client properties (the operator CLI's quieter logging)."""
    return Consumer(kafka_config(target, **{"group.id": group, "enable.auto.commit": False},
                                 **extra))


def committed_offsets(reader: Any, topic: str, partitions: Iterable[int],
                      timeout: float = 10.0) -> dict[int, int]:
    """partition → the committed offset of ``reader``'s group on ``topic`` (negative: none
    committed); ``reader`` from :func:`group_reader`. KafkaException when the broker does not
    answer in ``timeout``.

    Not the admin API's ``list_consumer_group_offsets``: in librdkafka 2.16 an admin client
    whose group coordinator moves while it asks (a broker killed, paused or restarted) can
    fail an assertion and abort the process (librdkafka#4605) or dereference a missing
    consumer group (librdkafka#5040) — in a librdkafka thread, so with no Python traceback:
    the -6 and -11 exits of the chaos runs. A consumer asks its own coordinator, and finds the
    new one (``tests/foundation/test_group_offsets.py``)."""
    asked = [TopicPartition(topic, p) for p in partitions]
    deadline = time.monotonic() + timeout
    while True:  # a coordinator loading or moving (a new group, a failover) answers soon
        try:
            rows = reader.committed(asked, timeout=max(0.5, deadline - time.monotonic()))
            break
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            if (not isinstance(err, KafkaError) or err.code() not in COORDINATOR_MOVING
                    or time.monotonic() + 0.25 >= deadline):
                raise
            time.sleep(0.25)
    out: dict[int, int] = {}
    for tp in rows:
        if tp.error is not None:
            raise KafkaException(tp.error)
        out[tp.partition] = tp.offset
    return out


#: a group coordinator being loaded or moved: the committed offsets are asked again
COORDINATOR_MOVING = (KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
                      KafkaError.COORDINATOR_NOT_AVAILABLE)


class PartitionLag(NamedTuple):
    """One partition of a group's lag (:func:`group_lag_detail`)."""

    partition: int
    committed: int
    #: the partition's end as a read_committed reader sees it: its last stable offset — the
    #: log end offset (high watermark, ``kafka-consumer-groups``' LOG-END-OFFSET) unless a
    #: transaction is open on it, then the first offset of that transaction
    end: int
    #: what is left to read from ``committed`` (or the log start, when retention removed
    #: what follows it) to ``end``: committed records (transaction markers and aborted
    #: records excluded) when :attr:`exact`, else the offset distance
    lag: int
    #: ``lag`` counts records: the partition was at most :data:`EXACT_LAG_LIMIT` offsets
    #: behind (or not behind at all), and they were read to ``end``
    exact: bool
    #: the group has a committed offset here; without one, ``committed`` is the log start
    #: (where a reader resetting to earliest begins) and ``lag`` counts from it
    has_committed: bool = True


def group_lag_detail(reader: Any, c: Any, topic: str) -> list[PartitionLag]:
    """``reader``'s group (:func:`group_reader`) on one topic, per partition: its committed
    offset, the log end offset and the records left (exact up to :data:`EXACT_LAG_LIMIT`,
    offsets beyond), sorted by partition."""
    bounds = end_offsets(c, topic)
    rows = []
    for partition, offset in committed_offsets(reader, topic, bounds).items():
        low, end = bounds[partition]
        committed = offset if offset >= 0 else low
        # offsets below the log start are gone (retention, kafka-delete-records): a reader
        # goes on from the log start, so they are not left to read
        start = max(committed, low)
        behind = max(0, end - start)
        exact = behind <= EXACT_LAG_LIMIT
        left = behind
        if 0 < behind <= EXACT_LAG_LIMIT:
            try:  # a read cut short (a slow leader, no READ) is not a count: offsets, inexact
                left = records_between(c, topic, partition, start, end)
            except (TimeoutError, KafkaException):
                exact = False
        elif behind > EXACT_LAG_LIMIT:
            # too far to count: but offsets of aborted transactions alone (a connector whose
            # every commit aborts rewrites its batch again and again) are no records — the
            # stall watchdog took them for a backlog and exited the worker every 2 minutes
            try:
                if not has_record_between(c, topic, partition, start, end):
                    left, exact = 0, True
            except (TimeoutError, KafkaException):
                pass  # cannot tell: the offset distance, inexact
        rows.append(PartitionLag(partition, committed, end, left, exact, offset >= 0))
    return sorted(rows)


def group_lag(reader: Any, c: Any, topic: str) -> list[tuple[int, int, int]]:
    """(partition, committed, committed + records left) for ``reader``'s group
    (:func:`group_reader`) on one topic: the third figure is not the log end (a transactional
    topic's end counts commit markers too) but where the group would be with every record
    read, so ``end − committed`` is the number of records left (exact up to
    :data:`EXACT_LAG_LIMIT`, offsets beyond) — what the lag gauges and the stall watchdog
    take. :func:`group_lag_detail` keeps the log end and the count apart."""
    return [(row.partition, row.committed, row.committed + row.lag)
            for row in group_lag_detail(reader, c, topic)]


def unowned_partitions(admin: AdminClient, group: str, topic: str,
                       partitions: set[int], timeout_s: float = 10.0) -> set[int]:
    """Of ``partitions`` of ``topic``, those no member of ``group`` is assigned right now
    (:func:`unowned_in`), asked with ``admin`` in this process — which librdkafka#4605 can
    abort (decision 0008): a pipeline process asks through
    :func:`common.group_describe.describe_group_isolated` instead."""
    description = admin.describe_consumer_groups([group])[group].result(timeout=timeout_s)
    return unowned_in(description, topic, partitions)


def unowned_in(description: Any, topic: str, partitions: set[int]) -> set[int]:
    """Of ``partitions`` of ``topic``, those no member of the described group is assigned;
    empty ("cannot tell") unless the group is Stable or Empty: in a rebalance (or an unknown
    or dead state) the broker's classic coordinator describes its members without their
    assignments, so every partition would look unowned."""
    from confluent_kafka import ConsumerGroupState

    state = getattr(description, "state", None)
    if state not in (ConsumerGroupState.STABLE, ConsumerGroupState.EMPTY):
        return set()
    owned = {tp.partition for member in description.members
             for tp in (member.assignment.topic_partitions if member.assignment else [])
             if tp.topic == topic}
    return set(partitions) - owned


def records_between(c: Any, topic: str, partition: int, start: int, end: int) -> int:
    """Committed records in [start, end) of a partition (markers and aborted ones excluded);
    ``c`` must be a read_committed consumer. TimeoutError after 10 s without reaching
    ``end``, KafkaException on an error from the broker: a partial read is not a count (a
    lenient count once made a read cut short a lag of 0, reported exact)."""
    found: dict[int, list[int]] = {partition: []}
    committed_record_offsets(c, topic, {partition: (start, end)}, timeout_s=10, into=found)
    return len(found[partition])


def has_record_between(c: Any, topic: str, partition: int, start: int, end: int,
                       timeout_s: float = 10.0) -> bool:
    """Whether [start, end) of a partition holds a committed record (a read_committed ``c``
    reads to the first one, or to ``end`` through markers and aborted records). TimeoutError
    or KafkaException as :func:`records_between`."""
    records = range_records(c, topic, {partition: (start, end)}, timeout_s)
    try:
        return next(records, None) is not None
    finally:
        records.close()  # its unassign


def new_range_consumer(target: Connectable, group: str) -> Any:
    """A consumer for :func:`committed_record_offsets`: assigns, never joins or commits.

    A range whose start retention deleted (or ``kafka-delete-records``) reads on from the
    log start (``earliest``), whose records are all that is left: librdkafka's default
    (``largest``) jumped to the end and read nothing — a commit check passed unchecked, a lag
    counted 0."""
    return Consumer(kafka_config(target, **{
                     "group.id": group,
                     "enable.auto.commit": False, "enable.auto.offset.store": False,
                     "isolation.level": "read_committed", "enable.partition.eof": True,
                     "auto.offset.reset": "earliest", "fetch.wait.max.ms": 50,
                     # librdkafka prefetches up to 64 MB per consumer by default: on a
                     # backlog that cost the worker ~80 MB of RSS and 166 ms per commit check
                     # (fetch.max.bytes spans many partitions' max.partition.fetch.bytes:
                     # at 1 MB / 256 KB, partitions 5 and 6 of 6 starved)
                     "queued.max.messages.kbytes": 2048, "queued.min.messages": 500,
                     "fetch.max.bytes": 8 << 20, "max.partition.fetch.bytes": 128 << 10}))


def committed_record_offsets(c: Any, topic: str, ranges: dict[int, tuple[int, int]],
                             timeout_s: float = 10.0,
                             into: dict[int, list[int]] | None = None) -> dict[int, list[int]]:
    """partition → offsets of the committed records in [start, end) (markers and aborted
    records excluded); ``c`` from :func:`new_range_consumer`. TimeoutError when the broker
    does not answer in ``timeout_s`` (``into``, when given, keeps what was read by then)."""
    out: dict[int, list[int]] = into if into is not None else {}
    for p in ranges:
        out.setdefault(p, [])
    for msg in range_records(c, topic, ranges, timeout_s):
        out[msg.partition()].append(msg.offset())
    return out


def range_records(c: Any, topic: str, ranges: dict[int, tuple[int, int]],
                  timeout_s: float = 10.0) -> Generator[Any, None, None]:
    """The committed records (confluent ``Message``) of each partition's [start, end), in
    offset order per partition; ``c`` from :func:`new_range_consumer`. TimeoutError when the
    broker does not answer in ``timeout_s``."""
    todo = {p: (start, end) for p, (start, end) in ranges.items() if end > start}
    if not todo:
        return
    c.assign([TopicPartition(topic, p, start) for p, (start, _) in todo.items()])
    deadline = time.monotonic() + timeout_s
    try:
        while todo:
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic} partitions {sorted(todo)} took over "
                                   f"{timeout_s:g} s")
            at_end = set()
            # consume() waits its whole timeout unless it fills the batch: keep it short
            for msg in c.consume(500, timeout=0.02):
                p = msg.partition()
                if msg.error():
                    if msg.error().code() == KafkaError._PARTITION_EOF:
                        at_end.add(p)  # the end of the readable log: nothing more below it
                        continue
                    raise KafkaException(msg.error())
                if p in todo and todo[p][0] <= msg.offset() < todo[p][1]:
                    yield msg
            for tp in c.position([TopicPartition(topic, p) for p in todo]):
                if tp.offset >= todo[tp.partition][1] or tp.partition in at_end:
                    del todo[tp.partition]
    finally:
        c.unassign()


def lag_reader(bootstrap: Connectable, group: str, topic: str) -> Any:
    """A ``() -> group_lag(...)`` reader with its own clients, made at its first call (never a
    process's consumer: safe from another thread). The worker's watchdog and the lag gauges
    use it."""
    clients: list[Any] = []

    def read() -> list[tuple[int, int, int]]:
        if not clients:
            clients.append(group_reader(bootstrap, group))
            clients.append(Consumer(kafka_config(bootstrap, **{  # earliest: as above
                "group.id": f"{group}-watchdog", "enable.auto.commit": False,
                "isolation.level": "read_committed", "auto.offset.reset": "earliest"})))
        return group_lag(clients[0], clients[1], topic)
    return read
