"""`sfprov dlq list` and `sfprov lag` when Kafka refuses or cannot finish the read (CLI review).

``scan`` dropped every error a poll returned, and a listing gave up a partition quietly: with
Describe allowed but Read refused (or a leader away, or a transaction holding the last
stable offset), `dlq list` printed "0 dead letter(s)", exit 0, and `lag` said the connector
had "no replay position committed yet". No broker: a fake consumer."""

from __future__ import annotations

import argparse
import itertools
import types
from typing import Any

import pytest
from confluent_kafka import KafkaError, TopicPartition

from common.errors import KafkaError as PipelineKafkaError
from ops import cmd_dlq, cmd_kafka, kafkaview


class Msg:
    def __init__(self, err: KafkaError) -> None:
        self._err = err

    def error(self) -> KafkaError:
        return self._err


class ErringConsumer:
    """Watermarks answer; every poll returns ``code`` as an error event."""

    def __init__(self, code: int) -> None:
        self.code = code

    def assign(self, tps: list[TopicPartition]) -> None:
        self.tps = tps

    def poll(self, _timeout: float) -> Msg:
        return Msg(KafkaError(self.code))

    def position(self, tps: list[TopicPartition]) -> list[TopicPartition]:
        return [TopicPartition(tp.topic, tp.partition, -1001) for tp in tps]

    def close(self) -> None:
        pass


@pytest.fixture
def erring(monkeypatch: pytest.MonkeyPatch) -> Any:
    def use(code: int, bounds: dict[int, tuple[int, int]]) -> None:
        clock = itertools.count(0.0, 1.0)  # each look a second later: the give-up comes fast
        monkeypatch.setattr(kafkaview, "time", types.SimpleNamespace(monotonic=lambda: next(clock)))
        monkeypatch.setattr(kafkaview, "consumer", lambda settings, **_kw: ErringConsumer(code))
        monkeypatch.setattr(kafkaview, "end_offsets", lambda c, t: bounds)
    return use


def dlq_args() -> argparse.Namespace:
    return argparse.Namespace(action="list", offsets=None, all=False, stage=None,
                              order_id=None, json=False, bootstrap="127.0.0.1:9092",
                              prefix=None, usage_error=None)


def test_a_listing_refused_its_read_is_an_error_not_zero_dead_letters(erring, capsys) -> None:
    erring(KafkaError.TOPIC_AUTHORIZATION_FAILED, {0: (0, 40), 1: (0, 7), 2: (0, 12)})
    with pytest.raises(PipelineKafkaError, match="TOPIC_AUTHORIZATION_FAILED.*no ACL"):
        cmd_dlq.dlq(dlq_args())
    assert "0 dead letter(s)" not in capsys.readouterr().out


def test_a_listing_whose_partition_stops_before_its_end_is_an_error(erring, capsys) -> None:
    """A node away: retried, then given up — said, with the last error, not a short list."""
    erring(KafkaError._TRANSPORT, {0: (0, 40)})
    with pytest.raises(PipelineKafkaError, match=r"partitions \[0\] stopped before their end "
                                                 r"offsets \[40\] \(last error: _TRANSPORT"):
        cmd_dlq.dlq(dlq_args())


def test_an_unreadable_connector_position_is_not_no_position(erring, capsys) -> None:
    erring(KafkaError.TOPIC_AUTHORIZATION_FAILED, {0: (0, 25)})
    with pytest.raises(PipelineKafkaError, match="TOPIC_AUTHORIZATION_FAILED"):
        cmd_kafka._print_connector_position(dlq_args())
    assert "no replay position committed yet" not in capsys.readouterr().out
