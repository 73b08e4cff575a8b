"""The worker's session timeout against a real broker's bounds (group.min/max.session.
timeout.ms; Kafka's defaults: 6 s to 30 min). Refused, aiokafka kept the JoinGroup error
and the worker idled for ever; now the start-up check names the setting (exit 64)."""

from __future__ import annotations

import pytest

from common.errors import ConfigError
from common.kafka import check_session_timeout
from common.settings import KafkaSettings

pytestmark = pytest.mark.broker


def test_a_session_below_the_brokers_minimum_is_refused_at_start(
        kafka_settings: KafkaSettings) -> None:
    with pytest.raises(ConfigError, match="^WORKER_SESSION_TIMEOUT_S: the brokers refuse a "
                                          r"session of 3 s \(their group.min.session"):
        check_session_timeout(kafka_settings, 3000, "WORKER_SESSION_TIMEOUT_S")
    check_session_timeout(kafka_settings, 10_000, "WORKER_SESSION_TIMEOUT_S")
