"""Settings fail fast with one line naming the variable; secrets never print."""

from __future__ import annotations

import asyncio
import base64
import io
import logging

import pytest

from common.errors import ConfigError
from common.log import setup_logging
from common.settings import (
    ConnectorSettings,
    KafkaSettings,
    SalesforceSettings,
    Secret,
    SinkSettings,
    WhmcsSettings,
    WorkerSettings,
    load_dotenv_file,
)

PEM = "-----BEGIN PRIVATE KEY-----\nMIIBVgIBADANBgkqhkiG9w0BAQEFAASCAUAwggE8\n-----END PRIVATE KEY-----\n"


def test_missing_required_variable_names_it():
    with pytest.raises(ConfigError) as info:
        WhmcsSettings.load({"WHMCS_API_URL": "http://x/includes/api.php",
                            "WHMCS_API_IDENTIFIER": "id"})
    message = str(info.value)
    assert message.startswith("WHMCS_API_SECRET:")
    assert "\n" not in message


def test_salesforce_needs_a_key_path_or_base64(tmp_path):
    base = {"SF_CLIENT_ID": "cid", "SF_USERNAME": "u@example.com"}
    with pytest.raises(ConfigError, match="^SF_PRIVATE_KEY_PATH"):
        SalesforceSettings.load(base)
    with pytest.raises(ConfigError, match="no such file"):
        SalesforceSettings.load({**base, "SF_PRIVATE_KEY_PATH": str(tmp_path / "nope.pem")})
    encoded = base64.b64encode(PEM.encode()).decode()
    settings = SalesforceSettings.load({**base, "SF_PRIVATE_KEY_BASE64": encoded})
    assert settings.private_key().reveal() == PEM
    assert settings.jwt_audience == "https://login.salesforce.com"


@pytest.mark.parametrize("env,name", [
    ({"KAFKA_PARTITIONS": "zero"}, "KAFKA_PARTITIONS"),
    ({"KAFKA_PARTITIONS": "0"}, "KAFKA_PARTITIONS"),
    ({"KAFKA_REQUESTS_RETENTION_MS": "1000"}, "KAFKA_REQUESTS_RETENTION_MS"),
])
def test_invalid_kafka_values_name_the_variable(env, name):
    with pytest.raises(ConfigError, match=f"^{name}:"):
        KafkaSettings.load(env)


WHMCS = {"WHMCS_API_IDENTIFIER": "id", "WHMCS_API_SECRET": "s"}


@pytest.mark.parametrize("section,env,name", [
    # without its scheme a URL parses as a path: every WHMCS call failed as 'maybe sent',
    # every Order ended WHMCS_UNAVAILABLE; the registry retried forever as 'unavailable'
    (WhmcsSettings, {**WHMCS, "WHMCS_API_URL": "whmcs.example.com/includes/api.php"},
     "WHMCS_API_URL"),
    (KafkaSettings, {"SCHEMA_REGISTRY_URL": "registry:8081"}, "SCHEMA_REGISTRY_URL"),
    (KafkaSettings, {"SCHEMA_REGISTRY_URL": "KEY:S3CRET@psrc.example.cloud"},
     "SCHEMA_REGISTRY_URL"),
    (KafkaSettings, {"KAFKA_MIN_INSYNC_REPLICAS": "3"}, "KAFKA_MIN_INSYNC_REPLICAS"),
    (KafkaSettings, {"KAFKA_OUTCOMES_RETENTION_MS": "0"}, "KAFKA_OUTCOMES_RETENTION_MS"),
    # a zero backoff resubscribed at once against the limit just hit; an initial past the
    # cap raised a traceback while the connector was built
    (ConnectorSettings, {"SF_PUBSUB_LIMIT_BACKOFF_S": "0"}, "SF_PUBSUB_LIMIT_BACKOFF_S"),
    (ConnectorSettings, {"SF_PUBSUB_BACKOFF_INITIAL_S": "60"}, "SF_PUBSUB_BACKOFF_INITIAL_S"),
    (SinkSettings, {"SINK_RETRY_BACKOFF_S": "0"}, "SINK_RETRY_BACKOFF_S"),
    (SinkSettings, {"SINK_LIMIT_BACKOFF_S": "nan"}, "SINK_LIMIT_BACKOFF_S"),
    (WorkerSettings, {"WORKER_DEDUPE_TTL_DAYS": "0"}, "WORKER_DEDUPE_TTL_DAYS"),
    (WorkerSettings, {"WORKER_STALL_TIMEOUT_S": "-1"}, "WORKER_STALL_TIMEOUT_S"),
])
def test_values_that_would_fail_later_are_refused_at_start(section, env, name):
    with pytest.raises(ConfigError, match=f"^{name}:") as info:
        section.load(env)
    assert "S3CRET" not in str(info.value)


def test_the_edges_that_stay_allowed():
    assert WorkerSettings.load({"WORKER_STALL_TIMEOUT_S": "0"}).stall_timeout_s == 0  # off
    assert KafkaSettings.load({"KAFKA_OUTCOMES_RETENTION_MS": "-1",
                               "KAFKA_REPLICATION_FACTOR": "3",
                               "KAFKA_MIN_INSYNC_REPLICAS": "2"}).min_insync_replicas == 2
    url = "https://KEY:S3CRET@psrc.example.cloud"
    assert KafkaSettings.load({"SCHEMA_REGISTRY_URL": url}).schema_registry_url == url
    assert WhmcsSettings.load({**WHMCS, "WHMCS_API_URL": "http://10.0.0.5/includes/api.php"})


def test_registry_credentials_in_the_url_are_percent_decoded():
    from common.avro import _safe_url

    url, auth = _safe_url("https://KEY:a%2Fb%40c@psrc.example.cloud/")
    assert url == "https://psrc.example.cloud" and auth == ("KEY", "a/b@c")


def test_retention_forever_is_allowed():
    assert KafkaSettings.load({"KAFKA_REQUESTS_RETENTION_MS": "-1"}).requests_retention_ms == -1


def test_choices_and_limits():
    with pytest.raises(ConfigError, match="^SF_EVENTS_REPLAY:"):
        ConnectorSettings.load({"SF_EVENTS_REPLAY": "YESTERDAY"})
    with pytest.raises(ConfigError, match="^SF_PUBSUB_NUM_REQUESTED:"):
        ConnectorSettings.load({"SF_PUBSUB_NUM_REQUESTED": "500"})
    with pytest.raises(ConfigError, match="^SINK_BATCH_SIZE:"):
        SinkSettings.load({"SINK_BATCH_SIZE": "201"})
    with pytest.raises(ConfigError, match="^WORKER_GUARD_LINGER_BUSY_S:"):
        WorkerSettings.load({"WORKER_GUARD_LINGER_S": "0.3", "WORKER_GUARD_LINGER_BUSY_S": "0.2"})
    with pytest.raises(ConfigError, match="^WORKER_READY_GRACE_S:"):
        WorkerSettings.load({"WORKER_READY_GRACE_S": "0"})
    assert WorkerSettings.load({}).ready_grace_s == 60.0
    c = ConnectorSettings.load({"SF_EVENTS_REPLAY": "earliest", "SF_EVENTS_ENABLED": "false"})
    assert c.replay == "EARLIEST" and c.events_enabled is False
    assert c.channel == "/event/OrderProvisionRequested__e"


@pytest.mark.parametrize("raw,module", [("uvloop", "uvloop"), ("asyncio", "asyncio")])
def test_the_worker_runs_on_the_event_loop_it_is_given(raw, module):
    from streams.__main__ import use_event_loop
    assert WorkerSettings.load({}).event_loop == "UVLOOP"
    try:
        use_event_loop(WorkerSettings.load({"WORKER_EVENT_LOOP": raw}).event_loop)
        loop = asyncio.new_event_loop()
        assert type(loop).__module__.partition(".")[0] == module
        loop.close()
    finally:
        asyncio.set_event_loop_policy(None)
    with pytest.raises(ConfigError, match="^WORKER_EVENT_LOOP:"):
        WorkerSettings.load({"WORKER_EVENT_LOOP": "tokio"})


def test_secrets_never_print_in_repr_str_or_logs():
    secret_value = "s3cr3t-WHMCS-value"
    settings = WhmcsSettings.load({"WHMCS_API_URL": "http://w/includes/api.php",
                                   "WHMCS_API_IDENTIFIER": "ident-123",
                                   "WHMCS_API_SECRET": secret_value,
                                   "WHMCS_API_ACCESS_KEY": "akey-999"})
    assert settings.secret.reveal() == secret_value
    for text in (repr(settings), str(settings), repr(settings.secret), f"{settings.secret}"):
        assert secret_value not in text and "akey-999" not in text
    stream = io.StringIO()
    setup_logging("test", "INFO", "JSON", stream=stream)
    log = logging.getLogger("sfprov.test")
    log.info("settings %s", settings)
    log.info("calling with secret=%s and Bearer %s", secret_value, "00Dxx!AQ4AQFakeToken123456")
    log.info("key %s", PEM)
    out = stream.getvalue()
    assert secret_value not in out and "akey-999" not in out
    assert "AQ4AQFakeToken123456" not in out
    assert "MIIBVgIBADANBgkqhkiG9w0BAQEFAASCAUAwggE8" not in out
    assert out.count("\n") == 3
    with pytest.raises(TypeError):
        import pickle

        pickle.dumps(Secret("x"))


def test_dotenv_file_is_read_and_environment_wins(tmp_path, monkeypatch):
    env_file = tmp_path / ".env"
    env_file.write_text("# comment\nexport KAFKA_PARTITIONS=9\nKAFKA_TOPIC_PREFIX='dev.'\n"
                        "KAFKA_BOOTSTRAP_SERVERS=from-file:9092\n")
    assert load_dotenv_file(env_file)["KAFKA_TOPIC_PREFIX"] == "dev."
    monkeypatch.setenv("SFPROV_ENV_FILE", str(env_file))
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "from-env:9092")
    settings = KafkaSettings.load()
    assert settings.partitions == 9
    assert settings.bootstrap_servers == "from-env:9092"
    assert settings.requests == "dev.salesforce.order-provision-requested"
