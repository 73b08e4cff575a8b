"""The commit check and the lag gauges when the log start has passed the group's commit.

Retention (or ``kafka-delete-records``) moved a requests partition's log start past the
worker group's committed offset: committed 2, log start 4. The checkpoint's range read of
[2, candidate) started below the log start — OFFSET_OUT_OF_RANGE — and librdkafka's default
``auto.offset.reset`` (``largest``) jumped to the partition's end: no records, so
``safe_commit`` let the candidate through unchecked (the check that cannot be made must
hold the commit), and ``group_lag`` counted 0 records (the lag gauge at 0, the stall
watchdog blind). Both consumers read on from the log start now (``earliest``, as
reconciliation's since 9ef9287: everything below it is gone), and the checkpoint's base is
the later of the committed offset and the log start, as ``redeliverable_from`` has it.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

import common.lag as lag


def test_the_range_and_lag_consumers_read_on_from_the_log_start(monkeypatch):
    made: dict[str, dict[str, Any]] = {}
    monkeypatch.setattr(lag, "Consumer",
                        lambda conf: made.setdefault(conf["group.id"], conf) and object())
    monkeypatch.setattr(lag, "group_lag", lambda reader, c, topic: [])
    lag.new_range_consumer("127.0.0.1:1", "w-checkpoint")
    assert lag.lag_reader("127.0.0.1:1", "w", "t")() == []
    assert made["w-checkpoint"].get("auto.offset.reset") == "earliest"
    assert made["w-watchdog"].get("auto.offset.reset") == "earliest"


class _Offsets:
    """The group reader: the group committed ``committed`` on every partition."""

    def __init__(self, committed: int) -> None:
        self.committed_at = committed

    def committed(self, partitions: list[Any], timeout: float) -> list[Any]:
        return [SimpleNamespace(partition=tp.partition, offset=self.committed_at, error=None)
                for tp in partitions]


class _Range:
    """The range consumer: only its watermarks are asked (the read is stubbed)."""

    def __init__(self, low: int, high: int) -> None:
        self.bounds = (low, high)

    def get_watermark_offsets(self, tp: Any, timeout: float) -> tuple[int, int]:
        return self.bounds


def test_the_commit_check_reads_from_the_log_start_when_it_passed_the_commit(monkeypatch):
    from streams.checkpoint import broker_reader

    monkeypatch.setattr(lag, "group_reader", lambda bootstrap, group: _Offsets(2))
    monkeypatch.setattr(lag, "new_range_consumer", lambda bootstrap, group: _Range(4, 6))
    asked: list[dict[int, tuple[int, int]]] = []

    def records(c, topic, ranges, timeout_s=10.0):
        asked.append(dict(ranges))
        return {p: [o for o in (4,) if start <= o < end] for p, (start, end) in ranges.items()}
    monkeypatch.setattr(lag, "committed_record_offsets", records)
    read = broker_reader("127.0.0.1:1", "w", "t")
    assert read({0: 6}) == {0: (4, [4])}
    assert asked == [{0: (4, 6)}]


@pytest.mark.broker
def test_a_commit_check_below_the_log_start_sees_the_records_left(kafka_bootstrap,
                                                                   unique_name, monkeypatch):
    """Modelled on test_sweep_redelivery's log-start case: 0-4 and a commit marker at 5,
    the group committed 2, then the records below 4 deleted. The check of a candidate 6
    sees record 4 (the commit is held there unless it finished), and the lag is 1 record."""
    from streams.checkpoint import broker_reader
    from tests.streams.test_checkpoint import log_start_past_commit

    topic, group = unique_name("check-log-start"), unique_name("group")
    log_start_past_commit(kafka_bootstrap, topic, group)
    read = broker_reader(kafka_bootstrap, group, topic)
    try:
        assert read({0: 6}) == {0: (4, [4])}
    finally:
        read.close()
    # the lag gauges' and stall watchdog's reader: record 4 is left (committed 2, end 3)
    clients: list[Any] = []
    real = lag.Consumer
    monkeypatch.setattr(lag, "Consumer", lambda conf: clients.append(real(conf)) or clients[-1])
    try:
        assert lag.lag_reader(kafka_bootstrap, group, topic)() == [(0, 2, 3)]
    finally:
        for client in clients:
            client.close()
