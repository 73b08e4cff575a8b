"""Settings a process accepted and then failed on (settings review): each is now one line
naming the variable and exit 64."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from confluent_kafka import KafkaError as CKafkaError

from common.errors import ConfigError
from common.settings import ConnectorSettings, KafkaSettings, SinkSettings, WorkerSettings


@pytest.mark.parametrize("value", ["SASL_SSL://pkc-abc.confluent.cloud:9092",
                                   "PLAINTEXT://kafka:9092", "kafka:99999",
                                   "kafka1:9092 kafka2:9092", "kafka:9O92", "::1"])
def test_a_bootstrap_list_the_worker_cannot_use_is_refused(value: str) -> None:
    """librdkafka strips a scheme; the worker's aiokafka read it as host ``sasl_ssl`` and
    never connected, exit 1 for ever; the others ended in a faust traceback."""
    with pytest.raises(ConfigError, match="^KAFKA_BOOTSTRAP_SERVERS:"):
        KafkaSettings.load({"KAFKA_BOOTSTRAP_SERVERS": value})


@pytest.mark.parametrize("value,kept", [("kafka1:9092, kafka2:19092", "kafka1:9092,kafka2:19092"),
                                        ("localhost", "localhost"), ("[::1]:9092", "[::1]:9092")])
def test_a_bootstrap_list_of_hosts_and_ports_is_kept(value: str, kept: str) -> None:
    assert KafkaSettings.load({"KAFKA_BOOTSTRAP_SERVERS": value}).bootstrap_servers == kept


@pytest.mark.parametrize("value", ["memory", "rocksdb", "postgres://x", "redis://"])
def test_a_table_store_faust_does_not_offer_is_refused(value: str) -> None:
    with pytest.raises(ConfigError, match="^WORKER_STORE:"):
        WorkerSettings.load({"WORKER_STORE": value})
    assert WorkerSettings.load({"WORKER_STORE": "Memory://"}).store == "memory://"


@pytest.mark.parametrize("section,variable", [
    (ConnectorSettings, "CONNECTOR_RECONCILE_INTERVAL_S"),
    (WorkerSettings, "WORKER_DRAIN_TIMEOUT_S"), (WorkerSettings, "WORKER_RECOVERY_AFTER_S"),
    (SinkSettings, "SINK_LINGER_S"), (SinkSettings, "SINK_IDLE_FLUSH_S"),
    (SinkSettings, "SINK_DRAIN_TIMEOUT_S"), (ConnectorSettings, "SF_PUBSUB_KEEPALIVE_COMMIT_S")])
def test_a_negative_duration_is_refused(section: type, variable: str) -> None:
    """A sign typo turned reconciliation off, or put the sink's drain deadline in the past."""
    with pytest.raises(ConfigError, match=f"^{variable}:"):
        section.load({variable: "-1"})


def test_a_session_timeout_the_broker_refuses_stops_the_sink_naming_the_setting() -> None:
    from sinks.app import Sink

    sink = object.__new__(Sink)
    sink.settings = SimpleNamespace(session_timeout_ms=45)  # type: ignore[assignment]
    message = SimpleNamespace(error=lambda: CKafkaError(CKafkaError.INVALID_SESSION_TIMEOUT))
    with pytest.raises(ConfigError, match="^SINK_SESSION_TIMEOUT_MS: the broker refuses a "
                                          "session of 45 ms"):
        sink._handle(message)  # type: ignore[arg-type]


def test_a_worker_session_outside_kafkas_default_bounds_is_warned_of() -> None:
    """aiokafka keeps the JoinGroup refusal for a getmany faust never calls before an
    assignment: a worker whose session the brokers refuse idled without a word (regression
    review). Asking the brokers' bounds (DescribeConfigs) needs a cluster-wide ACL the
    worker is not given — the secured-cluster test saw the denial — so the worker says it
    at start when the session is outside Kafka's defaults."""
    from common.kafka import session_outside_defaults

    for seconds in (3.0, 3600.0):
        warning = session_outside_defaults(seconds * 1000, "WORKER_SESSION_TIMEOUT_S")
        assert warning is not None and warning.startswith(
            f"WORKER_SESSION_TIMEOUT_S {seconds:g} s is outside Kafka's default bounds")
    for seconds in (6.0, 10.0, 30.0, 1800.0):
        assert session_outside_defaults(seconds * 1000, "WORKER_SESSION_TIMEOUT_S") is None


@pytest.mark.parametrize("value", ["5m", "nan", "-3"])
def test_the_containers_sandbox_wait_is_checked(value: str) -> None:
    """``5m`` waited the default, ``nan`` and ``-3`` not at all, without a word."""
    from ops.container import _wait_s

    with pytest.raises(ConfigError, match="^SFPROV_CONTAINER_SANDBOX_WAIT_S:"):
        _wait_s({"SFPROV_CONTAINER_SANDBOX_WAIT_S": value})
    assert _wait_s({"SFPROV_CONTAINER_SANDBOX_WAIT_S": " "}) == 60.0


def test_a_blank_env_file_setting_counts_as_unset(monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path) -> None:
    import common.envparse as envparse

    monkeypatch.setattr(envparse, "HOME", tmp_path)  # the checkout's .env: this one
    (tmp_path / ".env").write_text("SFPROV_PROBE_VARIABLE=from-dotenv\n")
    monkeypatch.setenv("SFPROV_ENV_FILE", "  ")  # was "no such file:   "
    assert envparse.load_dotenv_file() == {"SFPROV_PROBE_VARIABLE": "from-dotenv"}
