"""A partition's watermarks asked while its leader moves are asked again (a CI run saw
``NOT_LEADER_FOR_PARTITION`` from a topic just made fail a reconciliation read); another
error is raised at once."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from common import lag


class Answers:
    def __init__(self, *errors: int) -> None:
        self.errors, self.asked = list(errors), 0

    def list_topics(self, topic: str, timeout: float) -> SimpleNamespace:
        return SimpleNamespace(topics={topic: SimpleNamespace(error=None, partitions={0: None})})

    def get_watermark_offsets(self, tp: TopicPartition, timeout: float) -> tuple[int, int]:
        self.asked += 1
        if self.errors:
            raise KafkaException(KafkaError(self.errors.pop(0)))
        return 3, 10


def test_a_leader_moving_is_asked_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lag.time, "sleep", lambda _s: None)
    c = Answers(KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE)
    assert lag.end_offsets(c, "t") == {0: (3, 10)} and c.asked == 3


def test_another_error_or_a_third_failure_is_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lag.time, "sleep", lambda _s: None)
    with pytest.raises(KafkaException):
        lag.end_offsets(Answers(KafkaError.TOPIC_AUTHORIZATION_FAILED), "t")
    c = Answers(*[KafkaError.NOT_LEADER_FOR_PARTITION] * 3)
    with pytest.raises(KafkaException):
        lag.end_offsets(c, "t")
    assert c.asked == 3
