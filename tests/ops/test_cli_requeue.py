"""`sfprov dlq requeue`: each failing record once per `--all` (not once per dead letter of it,
which doubled the dead letters on every run while the cause stayed), the key as written,
and a usage error without a selection. The worker and the sink carry a requeued copy's
``sfprov.requeued_from`` into its dead letter. No broker: fakes for the producer and scan."""

from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

import pytest

from ops import cmd_dlq
from ops.kafkaview import Decoder, Record
from sinks.batch import Tracked
from sinks.deadletters import DeadLetters
from streams.emitter import KafkaEmitter
from streams.handler import DeadLetter, RawRecord

ROOT = Path(__file__).resolve().parents[2]
OID = "801000000000001AAA"
DLQ = "dl"


class _Message:
    """A consumed dead letter, as confluent-kafka gives it."""

    def __init__(self, partition: int, offset: int, key: bytes | None, value: bytes | None,
                 headers: list[tuple[str, bytes]] | None, ts: int) -> None:
        self.p, self.o, self.k, self.v, self.h, self.ts = partition, offset, key, value, headers, ts

    def topic(self) -> str:
        return DLQ

    def partition(self) -> int:
        return self.p

    def offset(self) -> int:
        return self.o

    def key(self) -> bytes | None:
        return self.k

    def value(self) -> bytes | None:
        return self.v

    def headers(self) -> list[tuple[str, bytes]] | None:
        return self.h

    def timestamp(self) -> tuple[int, int]:
        return (1, self.ts)


def decoded(offset: int, key: bytes | None, value: bytes | None,
            headers: list[tuple[str, bytes]], partition: int = 0) -> Record:
    """The Record `sfprov dlq` reads of this dead letter (the real decoder, raw topic)."""
    decoder = object.__new__(Decoder)
    decoder.serde = None
    return decoder.record(_Message(partition, offset, key, value, headers, 1000 + offset))


class Topic:
    """The dead-letter topic and everything requeue produced."""

    def __init__(self) -> None:
        self.letters: list[Record] = []
        self.produced: list[dict[str, Any]] = []
        self.markers = 0  # requeue markers written to the dead-letter topic

    def add(self, key: bytes | None, value: bytes | None,
            headers: list[tuple[str, bytes]]) -> Record:
        self.letters.append(decoded(len(self.letters), key, value, headers))
        return self.letters[-1]


@pytest.fixture()
def topic(monkeypatch: pytest.MonkeyPatch) -> Topic:
    t = Topic()

    class Producer:
        def __init__(self, conf: Any) -> None: ...

        def produce(self, topic: str, on_delivery: Any, **kwargs: Any) -> None:
            if topic == DLQ:  # a requeue marker: it lands in the dead-letter topic
                t.add(kwargs["key"], kwargs["value"], kwargs["headers"])
                t.markers += 1
                landed = t.letters[-1]
                on_delivery(None, types.SimpleNamespace(topic=lambda: DLQ,
                                                        partition=lambda: 0,
                                                        offset=lambda: landed.offset))
                return
            t.produced.append({"topic": topic, **kwargs})
            n = len(t.produced) - 1
            on_delivery(None, types.SimpleNamespace(topic=lambda: topic, partition=lambda: 1,
                                                    offset=lambda: 500 + n))

        def poll(self, timeout: float) -> None: ...

        def flush(self, timeout: float) -> int:
            return 0

    def scan(settings: Any, topic: str, schema: Any, match: Any = None, **kwargs: Any) -> Any:
        return (r for r in list(t.letters) if match is None or match(r))

    monkeypatch.setattr(cmd_dlq, "kafka_settings",
                        lambda args: types.SimpleNamespace(dead_letters=DLQ))
    monkeypatch.setattr(cmd_dlq, "client_config", lambda s, **k: {})
    monkeypatch.setattr(cmd_dlq, "scan", scan)
    monkeypatch.setattr(cmd_dlq, "Producer", Producer)
    return t


def args(*argv: str) -> argparse.Namespace:
    from ops.cli import build_parser

    return build_parser().parse_args(["dlq", *argv])


def worker_dead_letter(key: bytes | None, value: bytes | None,
                       headers: list[tuple[str, bytes]] | None, offset: int) -> tuple:
    """What the worker's emitter writes for a request it dead-letters: (key, value, headers)."""
    emitter = object.__new__(KafkaEmitter)  # no faust app: only what send_dead_letter uses
    sent: list[tuple] = []

    class Writer:
        async def send_soon(self, topic: str, partition: Any, k: Any, v: Any, h: Any) -> None:
            sent.append((topic, k, v, h))

    emitter.writer = Writer()  # type: ignore[assignment]
    emitter.dead_letters = DLQ
    emitter.unacked, emitter.clock = {}, time.time
    record = RawRecord(key, value, "requests", 0, offset, headers=headers)
    asyncio.run(emitter.send_dead_letter(DeadLetter(
        record, reason="WHMCS said no", error_class="WhmcsError", error_code="WORKER_ERROR",
        order_id=OID)))
    [(to, k, v, h)] = sent
    assert to == DLQ
    return k, v, h


def headers_of(produced: dict[str, Any]) -> dict[str, bytes]:
    return dict(produced.get("headers") or [])


# -- the worker and the sink carry the requeue marker ------------------------------------

@pytest.mark.parametrize("incoming", [
    [("sfprov.requeued_from", b"dl:2:40")],
    {"sfprov.requeued_from": b"dl:2:40"},  # faust may give headers as a mapping
])
def test_the_worker_carries_requeued_from_into_its_dead_letter(incoming):
    _k, _v, headers = worker_dead_letter(b"k", b"v", incoming, 5)
    assert dict(headers)["dlq.requeued_from"] == b"dl:2:40"
    _k, _v, plain = worker_dead_letter(b"k", b"v", None, 5)  # not a requeued copy
    assert "dlq.requeued_from" not in dict(plain)


def test_the_sink_carries_requeued_from_into_its_dead_letter():
    letters = object.__new__(DeadLetters)  # no broker: only what send uses
    out: list[dict[str, Any]] = []
    letters.kafka = types.SimpleNamespace(outcomes="o", dead_letters=DLQ)  # type: ignore
    letters.producer = types.SimpleNamespace(  # type: ignore[assignment]
        produce=lambda topic, **kw: out.append(kw), poll=lambda t: 0)
    letters.sent = 0
    tracked = Tracked(1, 7, b"k", b"v", outcome={"order_id": OID},
                      headers=[("sfprov.requeued_from", b"dl:0:3")])
    letters.send(tracked, reason="undecodable", error_class="SerdeError")
    assert dict(out[0]["headers"])["dlq.requeued_from"] == b"dl:0:3"
    letters.send(Tracked(1, 8, b"k", b"v"), reason="undecodable", error_class="SerdeError")
    assert "dlq.requeued_from" not in dict(out[1]["headers"])


# -- requeue --all: each failing record once ------------------------------------------------

@pytest.mark.parametrize("later_value", [b"v", b"other"])
def test_requeue_all_sends_the_newest_dead_letter_of_a_requeued_record(topic, capsys,
                                                                       later_value):
    """A: the first dead letter; B: the dead letter of A's requeued copy (it names A)."""
    topic.add(b"k", b"v", list(worker_dead_letter(b"k", b"v", None, 3)[2]))
    requeued_copy = [("sfprov.requeued_from", b"dl:0:0")]
    b = topic.add(b"k", later_value,
                  list(worker_dead_letter(b"k", later_value, requeued_copy, 90)[2]))
    assert b.headers["requeued_from"] == "dl:0:0"
    assert cmd_dlq.dlq(args("requeue", "--all")) == 0
    assert [(p["topic"], p["value"], headers_of(p)["sfprov.requeued_from"])
            for p in topic.produced] == [("requests", later_value, b"dl:0:1")]
    out = capsys.readouterr().out
    assert "requeued 1 record(s)" in out and "passed over 1 dead letter(s)" in out


def test_requeue_all_sends_a_record_dead_lettered_twice_once(topic):
    """The same record twice without the marker (a sink redelivery, or a stage that does not
    carry it): the newer one is sent; --offset still sends what it names."""
    headers = list(worker_dead_letter(b"k", b"v", None, 3)[2])
    topic.add(b"k", b"v", headers)
    topic.add(b"k", b"v", headers)
    topic.add(b"k", b"w", headers)  # another record
    assert cmd_dlq.dlq(args("requeue", "--all")) == 0
    assert sorted((p["value"], headers_of(p)["sfprov.requeued_from"])
                  for p in topic.produced) == [(b"v", b"dl:0:1"), (b"w", b"dl:0:2")]
    topic.produced.clear()
    assert cmd_dlq.dlq(args("requeue", "--offset", "0:0", "--offset", "0:1")) == 0
    assert len(topic.produced) == 2


def test_repeated_requeue_all_while_the_cause_stays_is_not_exponential(topic, capsys):
    """The reviewer's run: three dead letters, `requeue --all` three times, and the worker
    dead-letters every requeued copy again. It was 3 → 6 → 12 (every generation sent again);
    now each run sends the three records once."""
    for i in range(3):
        topic.add(OID.encode(), f"event-{i}".encode(),
                  list(worker_dead_letter(OID.encode(), f"event-{i}".encode(), None, i)[2]))
    sizes = []
    for run in range(3):
        before = len(topic.produced)
        assert cmd_dlq.dlq(args("requeue", "--all")) == 0
        copies = topic.produced[before:]
        assert len(copies) == 3, run
        for n, copy in enumerate(copies):  # the cause is not fixed: dead-lettered again
            key, value, headers = worker_dead_letter(copy["key"], copy["value"],
                                                     copy["headers"], 100 * run + n)
            topic.add(key, value, list(headers))
        sizes.append(len(topic.letters) - topic.markers)
    assert sizes == [6, 9, 12]
    assert topic.markers == 9  # one per copy that landed
    assert sorted(p["value"] for p in topic.produced[-3:]) == [b"event-0", b"event-1",
                                                               b"event-2"]


# -- the key as written -----------------------------------------------------------------------

@pytest.mark.parametrize("selection", [("--offset", "0:0", "--offset", "0:1"), ("--all",)])
def test_requeue_sends_the_key_byte_for_byte(topic, selection):
    """A key that is not UTF-8 came back with U+FFFD in it, an empty key as none."""
    headers = list(worker_dead_letter(b"x", b"v", None, 3)[2])
    topic.add(b"\xa0\x01", b"v1", headers)
    topic.add(b"", b"v2", headers)
    topic.add(None, b"v3", headers)
    assert cmd_dlq.dlq(args("requeue", *selection)) == 0
    keys = {p["value"]: p["key"] for p in topic.produced}
    assert keys[b"v1"] == b"\xa0\x01"
    assert keys[b"v2"] == b"" and keys[b"v2"] is not None
    if "--all" in selection:
        assert keys[b"v3"] is None


# -- requeue without a selection: a usage error, before any broker --------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_requeue_without_offset_or_all_is_a_usage_error_before_the_broker():
    """It read the whole dead-letter topic first, then printed its hint on stdout, exit 3."""
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "ops.cli", "-b", f"127.0.0.1:{free_port()}", "dlq", "requeue"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "SFPROV_ENV_FILE": "/dev/null",
             "SFPROV_STATE_DIR": "/nonexistent"})
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert time.monotonic() - started < 8  # no broker contact (its timeout is 10 s)
    assert result.stdout == "" and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("sfprov dlq: error: requeue needs --offset"), result.stderr


# -- requeue --all sends a dead letter once: the marker --------------------------------------

def sink_dead_letter(topic: Topic, order_id: str) -> Record:
    """A sink-stage dead letter of an outcome (a validation rule refused it)."""
    from common.deadletter import dead_letter_headers
    return topic.add(order_id.encode(), b"outcome-" + order_id.encode(), dead_letter_headers(
        stage="sink", reason="FIELD_CUSTOM_VALIDATION_EXCEPTION: no", error_class="x",
        source_topic="outcomes", source_partition=0, source_offset=7, order_id=order_id))


def test_a_second_requeue_all_does_not_send_an_outcome_already_written_again(topic, capsys):
    """The ops review's run: a sink dead letter requeued with --all, its copy written;
    weeks later another dead letter, and --all again sent the first one too. Its outcome
    was written a second time (equal values pass the fence) over what Salesforce held by
    then. A marker now says it was requeued, where its copy went; --offset still sends it."""
    sink_dead_letter(topic, OID)
    assert cmd_dlq.dlq(args("requeue", "--all")) == 0
    assert [p["value"] for p in topic.produced] == [b"outcome-" + OID.encode()]
    assert topic.markers == 1
    marker = topic.letters[-1]
    assert marker.headers["requeue_of"] == "0:0"
    assert marker.headers["requeued_to"] == "outcomes:1:500"
    assert marker.key_bytes() == OID.encode()
    later = "801000000000002AAA"
    sink_dead_letter(topic, later)
    capsys.readouterr()
    assert cmd_dlq.dlq(args("requeue", "--all")) == 0
    assert [p["value"] for p in topic.produced[1:]] == [b"outcome-" + later.encode()]
    out = capsys.readouterr().out
    assert "passed over 1 dead letter(s) requeued before" in out and ": 0:0;" in out
    assert cmd_dlq.dlq(args("list")) == 0
    listed = capsys.readouterr().out
    assert "0:0 " in listed and "(requeued to outcomes:1:500)" in listed
    assert "2 dead letter(s), 2 of them requeued" in listed  # the markers are not listed
    assert cmd_dlq.dlq(args("requeue", "--offset", "0:0")) == 0  # asked by name: sent
    assert topic.produced[-1]["value"] == b"outcome-" + OID.encode()


def test_a_marker_not_written_is_an_error_naming_what_follows(topic, monkeypatch, capsys):
    class NoMarkers(cmd_dlq.Deliveries):
        def produce(self, producer: Any, topic_name: str, tag: Any = None, **kw: Any) -> None:
            if topic_name == DLQ:
                self.failed.append((DLQ, "Broker: Topic authorization failed"))
                return
            super().produce(producer, topic_name, tag=tag, **kw)
    monkeypatch.setattr(cmd_dlq, "Deliveries", NoMarkers)
    sink_dead_letter(topic, OID)
    assert cmd_dlq.dlq(args("requeue", "--all")) == 1
    err = capsys.readouterr().err
    assert "1 requeue marker(s) not written to dl" in err
    assert "a later --all sends those dead letters again" in err


def test_a_twice_dead_lettered_outcome_is_not_resent_after_its_twin_was_requeued(topic):
    """The regression review's case: one outcome dead-lettered twice (a redelivery), the
    newer dead letter requeued and written; the next --all passed over the marked one
    first, so nothing superseded the older twin any more and it was sent in its place."""
    sink_dead_letter(topic, OID)
    sink_dead_letter(topic, OID)
    assert cmd_dlq.dlq(args("requeue", "--all")) == 0
    assert [headers_of(p)["sfprov.requeued_from"] for p in topic.produced] == [b"dl:0:1"]
    assert cmd_dlq.dlq(args("requeue", "--all")) == 0
    assert len(topic.produced) == 1, topic.produced[1:]


def test_requeue_all_passes_over_a_twin_of_a_dead_letter_requeued_by_offset(topic, capsys):
    """CLI review: one outcome dead-lettered twice (A 0:0, then B 0:1, a redelivery), A
    requeued with --offset and its copy written; a later --all sent B — the record a second
    time — saying "its requeued copy failed again", which nothing had. A failure of that
    copy is a later dead letter, which --all still sends."""
    from common.deadletter import dead_letter_headers

    sink_dead_letter(topic, OID)
    sink_dead_letter(topic, OID)
    assert cmd_dlq.dlq(args("requeue", "--offset", "0:0")) == 0
    assert len(topic.produced) == 1
    capsys.readouterr()
    assert cmd_dlq.dlq(args("requeue", "--all")) == 0
    assert len(topic.produced) == 1, topic.produced[1:]
    out = capsys.readouterr().out
    assert "passed over 1 dead letter(s) requeued before, or whose twin was" in out
    assert ": 0:1;" in out
    # the copy fails again: its dead letter names A, and --all sends it
    topic.add(OID.encode(), b"outcome-" + OID.encode(), dead_letter_headers(
        stage="sink", reason="FIELD_CUSTOM_VALIDATION_EXCEPTION: still no", error_class="x",
        source_topic="outcomes", source_partition=1, source_offset=500, order_id=OID,
        requeued_from=f"{DLQ}:0:0"))
    assert cmd_dlq.dlq(args("requeue", "--all")) == 0
    assert [headers_of(p)["sfprov.requeued_from"] for p in topic.produced[1:]] == [b"dl:0:3"]


def test_the_marker_lists_the_twins_it_covers_and_no_later_one(topic):
    """The twins a requeue covers are the ones it read, listed in its marker — not judged by
    comparing the CLI's clock with the worker's or sink's (regression review: a laptop's
    clock behind the worker's made the marker look older than its twin, sent again). A
    twin written after the copy landed is not covered: --all sends it."""
    sink_dead_letter(topic, OID)
    sink_dead_letter(topic, OID)
    sink_dead_letter(topic, "801000000000002AAA")  # another record: not a twin
    assert cmd_dlq.dlq(args("requeue", "--offset", "0:0")) == 0
    marker = topic.letters[-1]
    assert marker.headers["requeue_of"] == "0:0" and marker.headers["requeue_covers"] == "0:1"
    sink_dead_letter(topic, OID)  # 0:4, after the copy landed
    assert cmd_dlq.dlq(args("requeue", "--all")) == 0
    assert [headers_of(p)["sfprov.requeued_from"] for p in topic.produced[1:]] == \
        [b"dl:0:2", b"dl:0:4"]
