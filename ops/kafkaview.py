"""Kafka reading helpers for the operator CLI: decode records, scan topics, read positions.

Values are decoded with the schema the topic is declared with (``TOPIC_SCHEMAS``); a dead
letter's value is shown as text when it is printable, else as hex, with its ``dlq.*``
headers. Scans are bounded (end offsets taken at the start) so they always finish.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    TopicPartition,
)

from common.avro import AvroSerde, SerdeError, registry_for
from common.connection import is_refusal, kafka_config
from common.deadletter import parse_headers
from common.errors import KafkaError as PipelineKafkaError
from common.ids import describe_bad_id, is_salesforce_id
from common.lag import (  # end_offsets: re-exported
    PartitionLag,
    committed_record_offsets,
    end_offsets,
    group_lag_detail,
    group_reader,
)
from common.settings import KafkaSettings
from connectors.decode import order_id18

#: alias -> (settings attribute, schema name or None for raw)
TOPIC_ALIASES: dict[str, tuple[str, str | None]] = {
    "requests": ("requests", "provision_request"),
    "outcomes": ("outcomes", "provisioning_outcome"),
    "dead-letters": ("dead_letters", None),
    "dlq": ("dead_letters", None),
    "offsets": ("connector_offsets", "connector_offset"),
    "gaps": ("replay_gaps", "replay_gap"),
}


def resolve_topic(settings: KafkaSettings, name: str) -> tuple[str, str | None]:
    """(full topic name, schema name) for an alias or a full topic name."""
    if name in TOPIC_ALIASES:
        attr, schema = TOPIC_ALIASES[name]
        return getattr(settings, attr), schema
    for attr, schema in TOPIC_ALIASES.values():
        if getattr(settings, attr) == name:
            return name, schema
    return name, None


def order_id_forms(order_id: str) -> set[str]:
    """What an ``--order-id`` matches in records: the id as given and its 18-character form
    (:func:`connectors.decode.order_id18`), the one the pipeline writes in keys, values and
    dead-letter headers — a 15-character id, compared as typed, once found nothing."""
    if not is_salesforce_id(order_id):
        return {order_id}
    return {order_id, order_id18(order_id)}


def order_id_arg(text: str) -> str:
    """The parser of an Order id the CLI takes (``trace ORDER_ID``, every ``--order-id``): a
    Salesforce id of 15 or 18 ASCII letters and digits (:func:`common.ids.is_salesforce_id`),
    else argparse's one-line usage error (exit 2) before Kafka is asked. ``str.isalnum``
    once let non-ASCII letters through to the SOQL query, ``trace abc`` exited 1, and
    ``tail``/``dlq --order-id`` took any text and found nothing."""
    value = text.strip()
    if not is_salesforce_id(value):
        raise argparse.ArgumentTypeError(
            f"expected a Salesforce id (15 or 18 ASCII letters and digits), got "
            f"{describe_bad_id(text)}")
    return value


def jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dt.datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [jsonable(v) for v in value]
    return value


def _raw(value: bytes | None) -> Any:
    if value is None:
        return None
    try:
        text = value.decode()
        if text.isprintable():
            return text
    except UnicodeDecodeError:
        pass
    return {"base64": base64.b64encode(value).decode()}


@dataclass
class Record:
    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: str | None
    value: Any
    headers: dict[str, str]
    raw_value: bytes | None = None
    #: the key's bytes as written (``key`` is their text, a byte that is not UTF-8 replaced):
    #: what a requeue sends back, so a binary or empty key stays what it was
    raw_key: bytes | None = None

    def key_bytes(self) -> bytes | None:
        """The key as written: :attr:`raw_key`, else (a Record made without it) ``key``'s
        UTF-8."""
        if self.raw_key is not None or self.key is None:
            return self.raw_key
        return self.key.encode()

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"topic": self.topic, "partition": self.partition,
                               "offset": self.offset,
                               "timestamp": dt.datetime.fromtimestamp(
                                   self.timestamp_ms / 1000, dt.UTC).isoformat()
                               .replace("+00:00", "Z"),
                               "key": self.key, "value": jsonable(self.value)}
        if self.headers:
            out["headers"] = self.headers
        return out


class Decoder:
    def __init__(self, settings: KafkaSettings, schema: str | None, topic: str) -> None:
        registry = registry_for(settings)
        self.serde = AvroSerde(schema, topic=topic, registry=registry) if schema else None

    def record(self, msg: Any) -> Record:
        headers_list = msg.headers() or []
        headers = parse_headers(headers_list)
        for key, val in headers_list:
            if not key.startswith("dlq."):
                headers[key] = val.decode(errors="replace") if val else ""
        value: Any
        if self.serde is None:
            value = _raw(msg.value())
        elif msg.value() is None:
            value = {"tombstone": True}  # a null value: nothing to decode
        else:
            try:
                value = self.serde.decode(msg.value(), headers_list)
            except SerdeError as exc:
                value = {"undecodable": str(exc), "raw": _raw(msg.value())}
        raw_key = msg.key()
        key = raw_key.decode(errors="replace") if raw_key is not None else None
        return Record(msg.topic(), msg.partition(), msg.offset(), msg.timestamp()[1], key,
                      value, headers, msg.value(), raw_key)


#: librdkafka logs each failed connection attempt to stderr (``%3|…|FAIL|…``), twenty a
#: second while a broker is away, around the one line :func:`ops.cli.main` prints for the
#: error; the CLI's clients log only critical conditions
QUIET = {"log_level": 2}


def client_config(settings: KafkaSettings, **extra: Any) -> dict[str, Any]:
    """The confluent-kafka configuration of a CLI client (:data:`QUIET`)."""
    return kafka_config(settings, **QUIET, **extra)


def consumer(settings: KafkaSettings, **extra: Any) -> Consumer:
    conf = {**client_config(settings),
            "group.id": f"sfprov-cli-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False,
            "isolation.level": "read_committed", "auto.offset.reset": "earliest",
            "enable.partition.eof": False}
    conf.update(extra)
    return Consumer(conf)


#: errors that say the topic or partition read is not there (no point reading on)
_TOPIC_GONE = frozenset({KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC,
                         KafkaError._UNKNOWN_PARTITION})


def scan(settings: KafkaSettings, topic: str, schema: str | None, *,
         from_beginning: bool = True, last: int = 10, follow: bool = False,
         partitions: list[int] | None = None,
         match: Callable[[Record], bool] | None = None,
         idle_timeout: float = 2.0, complete: bool = False) -> Iterator[Record]:
    """Yield decoded records; without ``follow`` stop at the end offsets seen at the start.
    A partition that stops giving records before its end (an open transaction holds it, a
    node away) is given up on after ``idle_timeout`` + 10 s; ``complete``: raise then, instead
    of ending quietly with what was read (a check must not judge a partial read). An error
    Kafka gives for the topic itself (this principal may not read it, no such topic or
    partition) raises :class:`~common.errors.KafkaError` at once: it was dropped, and a
    listing said "0 dead letter(s)" with exit 0; other errors (a node away) are retried, the
    last one named if a partition is given up."""
    c = consumer(settings)
    try:
        bounds = end_offsets(c, topic)
        wanted = partitions if partitions is not None else sorted(bounds)
        starts = ({p: bounds[p][0] for p in wanted} if from_beginning else
                  last_record_starts(settings, topic, {p: bounds[p] for p in wanted}, last))
        assignment = []
        remaining: dict[int, int] = {}
        for p in wanted:
            high = bounds[p][1]
            start = starts[p]
            if start < high or follow:
                assignment.append(TopicPartition(topic, p, start if start < high or not follow
                                                 else high))
            if start < high:
                remaining[p] = high
        if not assignment:
            return
        c.assign(assignment)
        decoder = Decoder(settings, schema, topic)
        progress = time.monotonic()
        last_error = ""
        while True:
            msg = c.poll(0.3)
            err = msg.error() if msg is not None else None
            if err is not None:
                if is_refusal(err) or err.code() in _TOPIC_GONE:
                    raise PipelineKafkaError(
                        f"reading {topic}: {err.name()}: {err.str()}" + (
                            " (no ACL lets this principal read it)" if is_refusal(err) else ""))
                last_error = f" (last error: {err.name()}: {err.str()})"
            elif msg is not None:
                progress = time.monotonic()
                record = decoder.record(msg)
                if match is None or match(record):
                    yield record
            if follow:
                continue
            # Positions pass transaction markers too, so compare them, not record offsets.
            for tp in c.position([TopicPartition(topic, p) for p in list(remaining)]):
                if tp.offset >= remaining.get(tp.partition, 1 << 62):
                    remaining.pop(tp.partition, None)
            if not remaining:
                break
            if time.monotonic() - progress > idle_timeout + 10:
                if complete:
                    raise PipelineKafkaError(
                        f"{topic}: partitions {sorted(remaining)} stopped before their end "
                        f"offsets {[remaining[p] for p in sorted(remaining)]}{last_error}")
                break
    finally:
        c.close()


def last_record_starts(settings: KafkaSettings, topic: str,
                       bounds: dict[int, tuple[int, int]], last: int,
                       timeout_s: float = 10.0) -> dict[int, int]:
    """partition → the offset of its ``last``-th committed record from the end (its low
    watermark when it has fewer), ``bounds`` its (low, high) watermarks. Not ``high − last``:
    on a transactional topic (requests, connector-offsets) each commit marker takes an offset
    too, and ``tail --last 1`` once printed nothing, ``--last 10`` about five. Reads back in
    windows that double until one holds ``last`` records or reaches the low watermark; a
    partition the broker does not finish reading in ``timeout_s`` (an open transaction holds
    it) starts where its records read so far allow. ``last`` 0: the ends (``tail --last 0
    -f`` shows only new records; the CLI takes no negative ``--last``)."""
    starts = {p: high for p, (_, high) in bounds.items()}
    if last <= 0:
        return starts
    windows = {p: last for p, (low, high) in bounds.items() if high > low}
    c = consumer(settings, **{"enable.partition.eof": True, "fetch.wait.max.ms": 50})
    try:
        while windows:
            ranges = {p: (max(bounds[p][0], bounds[p][1] - window), bounds[p][1])
                      for p, window in windows.items()}
            found: dict[int, list[int]] = {}
            timed_out = False
            try:
                committed_record_offsets(c, topic, ranges, timeout_s=timeout_s, into=found)
            except TimeoutError:
                timed_out = True
            for p, (start, _) in ranges.items():
                offsets = found.get(p, [])
                if len(offsets) >= last:
                    starts[p] = offsets[-last]
                elif start == bounds[p][0] or timed_out:
                    starts[p] = start
                else:
                    windows[p] *= 2
                    continue
                del windows[p]
    finally:
        c.close()
    return starts


def last_value(settings: KafkaSettings, topic: str, schema: str, key: str) -> Record | None:
    """The last record for ``key`` in a small (compacted) topic. A read that stops before the
    topic's end raises :class:`~common.errors.KafkaError`: an older record, or none, is
    not the last ("no replay position committed yet" for one that could not be read)."""
    found = None
    for record in scan(settings, topic, schema, match=lambda r: r.key == key, complete=True):
        found = record
    return found


def rewind_consumer_positions(settings: KafkaSettings, topic: str, *,
                              from_time_ms: int | None = None,
                              offsets: dict[int, int] | None = None) -> dict[int, int]:
    """The offsets a group should restart from: by time (offsets_for_times) or explicit."""
    c = consumer(settings)
    try:
        bounds = end_offsets(c, topic)
        if offsets is not None:
            # a partition or offset the topic does not have was once left out of the plan
            # without a word (or committed, for the worker to reset from auto.offset.reset)
            for p, offset in offsets.items():
                if p not in bounds:
                    raise PipelineKafkaError(f"{topic} has no partition {p} (it has "
                                             f"{len(bounds)}: 0 to {len(bounds) - 1})")
                low, high = bounds[p]
                if not low <= offset <= high:
                    raise PipelineKafkaError(f"offset {offset} is outside partition {p} of "
                                             f"{topic} (offsets {low} to {high})")
            return {p: offsets.get(p, bounds[p][1]) for p in bounds}
        assert from_time_ms is not None
        found = c.offsets_for_times([TopicPartition(topic, p, from_time_ms) for p in bounds],
                                    timeout=10)
        return {tp.partition: (tp.offset if tp.offset >= 0 else bounds[tp.partition][1])
                for tp in found}
    finally:
        c.close()


def group_positions(settings: KafkaSettings, c: Any, group: str, topic: str
                    ) -> list[PartitionLag]:
    """``group``'s (partition, committed, log end, records left, exact) on ``topic``
    (:func:`common.lag.group_lag_detail`), read by a client that never joins the group;
    ``c`` reads the topic's ends."""
    reader = group_reader(settings, group, **QUIET)
    try:
        return group_lag_detail(reader, c, topic)
    finally:
        reader.close()


class Deliveries:
    """The delivery reports of a producer's records, to say how many reached Kafka:
    ``flush()`` returning 0 only says none is left in the queue — a record the broker
    refused (an unknown or invalid topic, one too large) is reported failed and gone.
    :meth:`produce` sends through it, :meth:`wait` flushes."""

    def __init__(self) -> None:
        self.delivered = 0
        self.failed: list[tuple[str, str]] = []  # (topic, reason), one per record
        self.unsent = 0
        #: (tag, TOPIC:PARTITION:OFFSET) of each delivered record produced with a tag
        self.landed: list[tuple[Any, str]] = []

    def __call__(self, err: Any, msg: Any, tag: Any = None) -> None:
        if err is None:
            self.delivered += 1
            if tag is not None:
                self.landed.append((tag, f"{msg.topic()}:{msg.partition()}:{msg.offset()}"))
        else:
            self.failed.append((msg.topic(), err.str()))

    def produce(self, producer: Any, topic: str, tag: Any = None, **kwargs: Any) -> None:
        """``producer.produce`` with this report as ``on_delivery``; a record refused at once
        (a full queue, a bad argument) is counted failed and the others still go. ``tag``:
        where it landed is kept in :attr:`landed` with it."""
        try:
            producer.produce(topic, on_delivery=lambda err, msg: self(err, msg, tag), **kwargs)
        except (KafkaException, BufferError) as exc:
            err = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
            self.failed.append((topic, err.str() if err is not None else str(exc)))
        producer.poll(0)

    def wait(self, producer: Any, timeout_s: float = 30.0) -> Deliveries:
        """Flush, then a known fate for each record still unsent after ``timeout_s``: one
        never sent is purged (reported failed: it did not land), one in flight is waited for
        (its real report: the broker may have taken it; by ``message.timeout.ms`` at the
        latest). Left in the queue, such a record was counted not delivered, then sent by the
        producer's next flush — a requeued copy with no marker, sent again by the advice to
        run again."""
        if producer.flush(timeout_s):
            producer.purge(in_queue=True, in_flight=False)
            while producer.flush(timeout_s):
                pass
        self.unsent = 0
        return self

    @property
    def not_delivered(self) -> int:
        return len(self.failed) + self.unsent

    def problems(self) -> str:
        """What went wrong, by topic and reason: ``to x: Broker: Invalid topic (2)``."""
        counts: dict[tuple[str, str], int] = {}
        for where in self.failed:
            counts[where] = counts.get(where, 0) + 1
        parts = [f"to {topic}: {reason}" + (f" ({n})" if n > 1 else "")
                 for (topic, reason), n in counts.items()]
        if self.unsent:
            parts.append(f"{self.unsent} still unsent when the wait ended")
        return "; ".join(parts)


__all__ = ["OFFSET_BEGINNING", "QUIET", "TOPIC_ALIASES", "Deliveries", "Record", "client_config",
           "end_offsets", "group_positions", "last_record_starts", "last_value",
           "order_id_arg", "order_id_forms", "resolve_topic",
           "rewind_consumer_positions", "scan"]
