"""`dlq requeue` and `reconcile` on a broker slower than their 30 s wait: a record still
unsent then was counted not delivered, yet the next flush (the requeue markers') sent it —
a copy in its topic with no marker, "requeued 0", exit 1, and a re-run sent it again. Now a
record never sent is purged (it did not land) and one in flight is waited for. No broker:
a producer that holds its records through the first flush."""

from __future__ import annotations

import types
from typing import Any

from common.deadletter import dead_letter_headers
from common.settings import KafkaSettings
from ops import cmd_dlq, cmd_orders
from tests.ops.test_cli_requeue import DLQ, OID, args, decoded


class _Purged:
    def str(self) -> str:
        return "Local: Purged in queue"


class SlowProducer:
    """The first flush returns with nothing acknowledged: the first record produced is in
    flight (the broker takes it later), the others still queued. ``purge`` drops the queued
    ones (failed reports); the next flush reports the rest delivered."""

    last: SlowProducer

    def __init__(self, conf: Any = None) -> None:
        self.queued: list[tuple[str, Any, dict[str, Any]]] = []
        self.in_flight: list[tuple[str, Any, dict[str, Any]]] = []
        self.purged: list[tuple[str, Any, dict[str, Any]]] = []
        self.landed: list[tuple[str, dict[str, Any]]] = []  # (topic, produce's kwargs)
        self.purges: list[dict[str, bool]] = []
        self.flushes = 0
        SlowProducer.last = self

    def produce(self, topic: str, on_delivery: Any, **kwargs: Any) -> None:
        self.queued.append((topic, on_delivery, kwargs))

    def poll(self, timeout: float) -> int:
        return 0

    def purge(self, in_queue: bool = True, in_flight: bool = True,
              blocking: bool = True) -> None:
        self.purges.append({"in_queue": in_queue, "in_flight": in_flight})
        if in_queue:
            self.purged, self.queued = self.queued, []
        if in_flight:
            self.purged, self.in_flight = self.purged + self.in_flight, []

    def flush(self, timeout: float) -> int:
        self.flushes += 1
        if self.flushes == 1:
            self.in_flight, self.queued = self.queued[:1], self.queued[1:]
            return len(self.in_flight) + len(self.queued)
        for topic, report, _kw in self.purged:
            report(_Purged(), types.SimpleNamespace(topic=lambda t=topic: t))
        for topic, report, kw in self.in_flight + self.queued:
            self.landed.append((topic, kw))
            n = len(self.landed)
            report(None, types.SimpleNamespace(topic=lambda t=topic: t, partition=lambda: 0,
                                               offset=lambda n=n: 500 + n))
        self.purged, self.in_flight, self.queued = [], [], []
        return 0


def test_requeue_marks_a_copy_that_landed_after_the_wait(monkeypatch, capsys):
    """Two sink dead letters; after 30 s one copy is in flight, the other still queued."""
    letters = [decoded(n, oid.encode(), b"outcome-" + oid.encode(), dead_letter_headers(
        stage="sink", reason="FIELD_CUSTOM_VALIDATION_EXCEPTION: no", error_class="x",
        source_topic="outcomes", source_partition=0, source_offset=7, order_id=oid))
        for n, oid in enumerate([OID, "801000000000002AAA"])]
    monkeypatch.setattr(cmd_dlq, "kafka_settings",
                        lambda a: types.SimpleNamespace(dead_letters=DLQ))
    monkeypatch.setattr(cmd_dlq, "client_config", lambda s, **k: {})
    monkeypatch.setattr(cmd_dlq, "scan", lambda s, t, sc, match=None, **k: (
        r for r in letters if match is None or match(r)))
    monkeypatch.setattr(cmd_dlq, "Producer", SlowProducer)

    assert cmd_dlq.dlq(args("requeue", "--offset", "0:0", "--offset", "0:1")) == 1
    producer = SlowProducer.last
    copies = [kw["value"] for topic, kw in producer.landed if topic == "outcomes"]
    assert copies == [b"outcome-" + OID.encode()]  # the purged one never reached Kafka
    markers = [dict(kw["headers"]) for topic, kw in producer.landed if topic == DLQ]
    assert [m["dlq.requeue_of"] for m in markers] == [b"0:0"]  # the copy that landed
    out, err = capsys.readouterr()
    assert "requeued 1 record(s)" in out
    assert "1 record(s) not requeued (to outcomes: Local: Purged in queue)" in err
    assert "marker" not in err
    assert producer.purges == [{"in_queue": True, "in_flight": False}]


def test_reconcile_counts_a_request_that_landed_after_the_wait(monkeypatch):
    monkeypatch.setattr(cmd_orders, "Producer", SlowProducer)
    settings = KafkaSettings.load({}, schema_registry_url="")
    sent = cmd_orders.send_requests(settings, [OID, "801000000000002AAA"])
    assert (sent.delivered, sent.not_delivered) == (1, 1)
    assert SlowProducer.last.purges == [{"in_queue": True, "in_flight": False}]
    assert sent.problems() == f"to {settings.requests}: Local: Purged in queue"


def test_nothing_is_purged_when_the_wait_sends_everything():
    class Prompt(SlowProducer):
        def flush(self, timeout: float) -> int:
            return 0

    producer = Prompt()
    assert cmd_dlq.Deliveries().wait(producer).unsent == 0
    assert producer.purges == []
