"""The connector's replay position, kept in Kafka (compacted topic), and replay gaps.

Key ``<connector>|<channel>``; value ``schemas/connector_offset.avsc``. A position record is
written **in the same Kafka transaction** as the events it covers, so a committed position
never points past an uncommitted event and an aborted batch never moves it. On start-up
:func:`load_position` reads the topic to its end with ``isolation.level=read_committed`` and
keeps the last value for the key — its real end (the high watermark), waiting for another
connector's transaction open there instead of stopping before it (:func:`_last_value`); the
connector then subscribes ``CUSTOM`` from it, i.e. Salesforce delivers the events *after*
that replay id.

Schema versions: both topics are plain Avro whose records carry the writer schema's
fingerprint (``sfprov.schema_fingerprint``; see :mod:`common.avro`), and every version of
``connector_offset.avsc`` / ``replay_gap.avsc`` is kept in ``schemas/history/``: a release
that adds a (defaulted) field still reads the position an older one stored. Readers must
pass the record's headers to the decode (a record without the fingerprint header was written
with :data:`common.avro.UNVERSIONED`'s version).

The LATEST marker: the first ``LATEST`` stream opened with no position stored is preceded
by a record under the key ``<connector>|<channel>|latest-opened`` (the same schema, an
empty ``replay_id``, ``committed_at`` when the stream was about to open), committed in the
connector's transaction, so a fenced instance cannot write it. Until a position is
committed for the connector's key, that stream's events are written nowhere else: a
successor that finds the marker and still no position (its predecessor was killed, or
exited, before its first batch or keepalive position) knows a ``LATEST`` stream was opened
before it and records a ``latest.resubscribed`` gap, as a second ``LATEST`` stream of one
process does. A position committed later supersedes it (a stored position is resumed
from, the marker is then not looked at). :func:`load_position` reads it in the same pass.

The owner record: after every ``init_transactions`` (``TransactionalWriter.start`` in
:mod:`connectors.writer`), before the position is read, the connector commits a record under
the key ``<connector>|<channel>|owner`` naming its instance (:data:`INSTANCE`), in a
transaction of its own: the last one committed names the instance whose
``init_transactions`` came last.
The same schema again (no file of its own in ``schemas/``), as the LATEST marker's: an
empty ``replay_id``, the instance in ``event_uuid`` (a uuid4 made once per process, the
host name and the pid: ``"<uuid> <host> pid <pid>"``), ``committed_at`` the claim's time.
A fence the connector cannot date (its clocks stopped with the VM) is its own transaction
timeout if the last owner record is still its own (:func:`load_owner`, ``connectors.source``).
The position and the LATEST marker are read by their keys: this one is not theirs.

Pitfall: call :func:`load_position` only **after** the transactional producer's
``init_transactions`` — that is what fences an older instance and completes or aborts its
open transaction. Read before it, and a zombie's in-flight batch could commit after we
read the position, and be written a second time by us.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from confluent_kafka import OFFSET_BEGINNING, Consumer, IsolationLevel, TopicPartition
from confluent_kafka import KafkaError as CKafkaError
from confluent_kafka.admin import AdminClient, OffsetSpec

from common.avro import AvroSerde, SerdeError, epoch_ms
from common.connection import Connectable, is_refusal, kafka_config, refusal_message
from common.errors import KafkaAccessError, KafkaError
from common.kafka import RunningDeadline, retry_until
from common.log import redact

EVENT = "event"
KEEPALIVE = "keepalive"
log = logging.getLogger("connectors")

T = TypeVar("T")
Headers = list[tuple[str, Any]]  # a record's headers, as confluent-kafka gives them


@dataclass(frozen=True)
class Position:
    replay_id: bytes
    source: str  # EVENT | KEEPALIVE
    committed_at_ms: int
    event_uuid: str | None = None


def offset_key(connector: str, channel: str) -> bytes:
    return f"{connector}|{channel}".encode()


#: the LATEST marker's key, after the connector's own (``<connector>|<channel>``)
LATEST_OPENED_SUFFIX = b"|latest-opened"


#: the owner record's key, after the connector's own
OWNER_SUFFIX = b"|owner"
#: this process's instance, named in its owner records: made once per process (a uuid4; the
#: host name and the pid for operators)
INSTANCE = f"{uuid.uuid4()} {socket.gethostname()} pid {os.getpid()}"


@dataclass(frozen=True)
class Owner:
    """An owner record: the instance whose ``init_transactions`` it followed, and when."""

    instance: str
    claimed_at_ms: int


@dataclass
class LatestOpened:
    """Filled by :func:`load_position` when the LATEST marker is stored: when a ``LATEST``
    stream was (about to be) opened with no position stored (epoch ms)."""

    at_ms: int | None = None


class OffsetCodec:
    """Encode/decode position and gap records (Avro, schemas/ as the contract)."""

    def __init__(self, connector: str, channel: str) -> None:
        self.connector = connector
        self.channel = channel
        self.key = offset_key(connector, channel)
        self.latest_opened_key = self.key + LATEST_OPENED_SUFFIX
        self.owner_key = self.key + OWNER_SUFFIX
        # Internal topics stay plain Avro (with the sfprov.schema header and the writer
        # schema's fingerprint) even with SCHEMA_REGISTRY_URL: start-up must not depend on
        # the registry, and only the connector and the CLI read them. decode() would read
        # either format.
        self._offsets = AvroSerde("connector_offset")
        self._gaps = AvroSerde("replay_gap")

    def position_value(self, position: Position) -> tuple[bytes, list[tuple[str, bytes]]]:
        value = self._offsets.encode({
            "connector": self.connector, "channel": self.channel,
            "replay_id": position.replay_id, "event_uuid": position.event_uuid,
            "source": position.source, "committed_at": position.committed_at_ms})
        return value, self._offsets.headers()

    def decode_position(self, value: bytes, headers: Headers | None = None) -> Position:
        """``headers``: the record's (they name the writer's schema version; without them
        the value is read with the current schema)."""
        rec = self._offsets.decode(value, headers)
        return Position(bytes(rec["replay_id"]), rec["source"], epoch_ms(rec["committed_at"]),
                        rec["event_uuid"])

    def latest_opened_value(self, opened_at_ms: int) -> tuple[bytes, list[tuple[str, bytes]]]:
        """The LATEST marker's value: the offsets schema with no replay id (empty)."""
        return self.position_value(Position(b"", KEEPALIVE, opened_at_ms))

    def owner_value(self, instance: str, claimed_at_ms: int
                    ) -> tuple[bytes, list[tuple[str, bytes]]]:
        """The owner record's value: the offsets schema with no replay id (empty) and the
        instance in ``event_uuid``."""
        return self.position_value(Position(b"", KEEPALIVE, claimed_at_ms, instance))

    def decode_owner(self, value: bytes, headers: Headers | None = None) -> Owner:
        """``headers``: as :meth:`decode_position`."""
        rec = self.decode_position(value, headers)
        return Owner(rec.event_uuid or "", rec.committed_at_ms)

    def gap_value(self, *, last_good: Position | None, policy: str, error_code: str,
                  error_message: str, detected_at_ms: int | None = None
                  ) -> tuple[bytes, list[tuple[str, bytes]]]:
        value = self._gaps.encode({
            "connector": self.connector, "channel": self.channel,
            "last_good_replay_id": last_good.replay_id if last_good else None,
            "last_good_at": last_good.committed_at_ms if last_good else None,
            "policy": policy, "error_code": error_code,
            "error_message": redact(error_message)[:2000],
            "detected_at": detected_at_ms or int(time.time() * 1000)})
        return value, self._gaps.headers()

    def decode_gap(self, value: bytes, headers: Headers | None = None) -> dict:
        """``headers``: as :meth:`decode_position`."""
        return self._gaps.decode(value, headers)


def load_position(bootstrap: Connectable, topic: str, codec: OffsetCodec, *,
                  timeout_s: float = 60.0,
                  latest_opened: LatestOpened | None = None) -> Position | None:
    """Last committed position for the codec's key, or None (read_committed, to the end).
    ``latest_opened``: given, the LATEST marker is read in the same pass and, when stored,
    its time set there.

    ``timeout_s`` is this process's running time (:class:`~common.kafka.RunningDeadline`)
    for the topic's metadata and the read together. The metadata is asked for in attempts
    of 1–10 s, with a backoff between them, until then: a broker away for a while — a
    paused node, a failover — is waited for instead of ending the connector's start-up (a
    chaos run saw it exit 1 after one 30 s attempt met a paused single broker). A refusal
    of the connector's principal raises :class:`KafkaAccessError` at once."""
    if latest_opened is None:
        return _load_last(bootstrap, topic, codec.key, codec.decode_position,
                          timeout_s=timeout_s, what="position")
    found = _last_values(bootstrap, topic, (codec.key, codec.latest_opened_key),
                         timeout_s=timeout_s, what="position")
    marker = found.get(codec.latest_opened_key)
    if marker is not None:
        latest_opened.at_ms = _decoded(codec.decode_position, marker, topic,
                                       "LATEST marker").committed_at_ms
    position = found.get(codec.key)
    return None if position is None else _decoded(codec.decode_position, position, topic,
                                                  "position")


def load_last_gap(bootstrap: Connectable, topic: str, codec: OffsetCodec, *,
                  timeout_s: float = 60.0) -> dict | None:
    """The last replay gap recorded for the codec's key (``schemas/replay_gap.avsc``), or
    None; read and refused like :func:`load_position`. The connector reads it at start-up:
    a gap recorded by an instance that stopped before its gap pass ran is passed again."""
    return _load_last(bootstrap, topic, codec.key, codec.decode_gap,
                      timeout_s=timeout_s, what="replay gaps")


def load_owner(bootstrap: Connectable, topic: str, codec: OffsetCodec, *,
                timeout_s: float = 60.0) -> Owner | None:
    """The last owner record committed for the codec's key, or None; read and refused like
    :func:`load_position` (to the end: an owner record in a transaction still open there is
    waited for)."""
    return _load_last(bootstrap, topic, codec.owner_key, codec.decode_owner,
                      timeout_s=timeout_s, what="owner record")


def still_owner(bootstrap: Connectable, topic: str, codec: OffsetCodec, instance: str) -> bool:
    """Whether the last owner record names ``instance``: then no other instance has claimed
    the stream since its last ``init_transactions``, and a fence of its transaction younger
    than its timeout was the broker timing it out while the host's clocks stood still (a
    hypervisor freeze). None stored, another instance's, or a failed read: False (a failed
    read must not turn a newer instance's fence into a take-over). Says why in the log."""
    try:
        owner = load_owner(bootstrap, topic, codec)
    except KafkaError as read_exc:
        log.error("fenced in a transaction younger than its timeout, and the owner record "
                  "cannot be read (%s): taken for a newer instance's fence", read_exc)
        return False
    if owner is None:
        log.error("fenced, and no owner record is stored in %s", topic)
        return False
    claimed = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(owner.claimed_at_ms / 1000))
    if owner.instance != instance:
        log.error("fenced: the last owner record in %s names instance %s (claimed %s), not "
                  "this one (%s)", topic, owner.instance, claimed, instance)
        return False
    log.warning("fenced in a transaction younger than its timeout on this host's clocks, "
                "yet the last owner record in %s is this instance's (%s, claimed %s): no "
                "other instance has claimed the stream since this one's last "
                "init_transactions; the broker timed the transaction out while the clocks "
                "stood still (a frozen VM)", topic, instance, claimed,
                extra={"cause": "txn_timeout"})
    return True


def _load_last(bootstrap: Connectable, topic: str, key: bytes,
               decode: Callable[[bytes, Headers], T], *, timeout_s: float, what: str
               ) -> T | None:
    """The last committed value for ``key`` in ``topic``, decoded with its headers (the
    writer's schema version); an undecodable one is a :class:`KafkaError` naming the
    topic."""
    last = _last_value(bootstrap, topic, key, timeout_s=timeout_s, what=what)
    return None if last is None else _decoded(decode, last, topic, what)


def _decoded(decode: Callable[[bytes, Headers], T], stored: tuple[bytes, Headers],
             topic: str, what: str) -> T:
    try:
        return decode(*stored)
    except SerdeError as exc:
        raise KafkaError(f"the stored {what} in {topic} is unreadable: {exc}") from exc


def _last_value(bootstrap: Connectable, topic: str, key: bytes, *, timeout_s: float,
                what: str) -> tuple[bytes, Headers] | None:
    """The last committed value for ``key`` in ``topic``, with its headers
    (:func:`_last_values`)."""
    return _last_values(bootstrap, topic, (key,), timeout_s=timeout_s, what=what).get(key)


def _last_values(bootstrap: Connectable, topic: str, keys: tuple[bytes, ...], *,
                 timeout_s: float, what: str) -> dict[bytes, tuple[bytes, Headers]]:
    """The last committed value of each of ``keys`` in ``topic`` (every partition read to
    its end), with its headers; a key with none — or whose last record is a tombstone (an
    operator's reset, before the log cleaner removes the key) — is left out.

    "Its end" is the partition's log end as it is when the read starts (its high watermark,
    asked for ``read_uncommitted``), not the first end-of-partition the ``read_committed``
    reader meets: that one comes at the *last stable offset*, the first record of a
    transaction still open there. Another connector (another name or channel) shares the
    topic; paused with its transaction open, it would hide every position committed after
    its record — we would resume from an older one (events written twice) or from the
    replay preset (events skipped, with LATEST). So the reader goes on until its position
    reaches the log end, which waits for that transaction to commit or abort (its producer
    resumes, a newer instance fences it, or the broker aborts it for its age). Past the
    deadline that is a retryable KafkaError saying a transaction is still open."""
    config = kafka_config(bootstrap)
    consumer = Consumer({**config, **{
        "group.id": f"sfprov-offset-reader-{uuid.uuid4().hex}",
        "enable.auto.commit": False, "isolation.level": "read_committed",
        "enable.partition.eof": True, "auto.offset.reset": "earliest"}})
    deadline = RunningDeadline(timeout_s)
    doing, failure = f"reading the {what} from {topic}", f"cannot read {topic}"

    def refused(err: Any) -> str:
        return refusal_message("the connector's principal", f"read {topic}", err)
    try:
        meta = retry_until(deadline, lambda wait: consumer.list_topics(topic, timeout=wait),
                           doing=doing, failure=failure, refused=refused)
        tmeta = meta.topics.get(topic)
        if tmeta is None or tmeta.error is not None:
            raise KafkaError(f"topic {topic} ({what}) does not exist "
                             f"({tmeta.error if tmeta else 'missing'})")
        admin, partitions = AdminClient(config), list(tmeta.partitions)
        ends = retry_until(deadline, lambda wait: _log_ends(admin, topic, partitions, wait),
                           doing=doing, failure=failure, refused=refused)
        remaining = {p: end for p, end in ends.items() if end > 0}
        last: dict[bytes, tuple[bytes, Headers]] = {}
        if not remaining:
            return last  # nothing was ever written
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in remaining])
        stable: dict[int, int] = {}  # partition -> an end-of-partition met before its end
        while remaining:
            msg = consumer.poll(deadline.attempt(0.5, 0.5))
            if msg is not None:
                err = msg.error()
                if err is None:
                    value, headers = msg.value(), msg.headers() or []
                    key = msg.key()
                    if key in keys and value is None:  # a tombstone: no value any more,
                        last.pop(key, None)  # as once compacted (and as sfprov lag reads it)
                    elif key in keys and value is not None:
                        last[key] = (value, list(headers.items() if isinstance(headers, dict)
                                                 else headers))
                elif err.code() == CKafkaError._PARTITION_EOF:
                    partition, offset = msg.partition() or 0, msg.offset() or 0
                    if offset >= remaining.get(partition, 0):
                        remaining.pop(partition, None)
                    else:  # the last stable offset: a transaction is open behind it
                        stable[partition] = offset
                elif is_refusal(err):
                    raise KafkaAccessError(refused(err))
                else:
                    raise KafkaError(f"reading {topic}: {err}", retryable=err.retriable())
            # positions pass transaction markers and aborted records, which no message shows
            for tp in consumer.position([TopicPartition(topic, p) for p in remaining]):
                if tp.offset >= remaining[tp.partition]:
                    del remaining[tp.partition]
            if remaining and (msg is None or msg.error() is not None) and deadline.failed():
                held = {p: (stable[p], end) for p, end in remaining.items() if p in stable}
                if held:
                    raise KafkaError(
                        f"timed out reading {topic} to its end: a transaction on {topic} is "
                        "still open (a producer sharing the topic — another connector, paused? — "
                        "has neither committed nor aborted it; the broker aborts it once it "
                        "outlives its transaction timeout; "
                        + ", ".join(f"partition {p}: last stable offset {lso}, end {end}"
                                    for p, (lso, end) in sorted(held.items()))
                        + ")", retryable=True)
                raise KafkaError(f"timed out reading {topic} to its end", retryable=True)
        return last
    finally:
        consumer.close()


def _log_ends(admin: AdminClient, topic: str, partitions: list[int],
              wait: float) -> dict[int, int]:
    """partition -> its log end offset (high watermark, read_uncommitted: past any open
    transaction's records); KafkaException as the admin call raised it."""
    futures = admin.list_offsets({TopicPartition(topic, p): OffsetSpec.latest()
                                  for p in partitions},
                                 isolation_level=IsolationLevel.READ_UNCOMMITTED,
                                 request_timeout=wait)
    return {tp.partition: future.result().offset for tp, future in futures.items()}
