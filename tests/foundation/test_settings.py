"""Settings fail fast with one line naming the variable; secrets never print."""

from __future__ import annotations

import asyncio
import base64
import io
import logging

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

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
_RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
KEY = _RSA.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                         serialization.NoEncryption()).decode()


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
    encoded = base64.b64encode(KEY.encode()).decode()
    settings = SalesforceSettings.load({**base, "SF_PRIVATE_KEY_BASE64": encoded})
    assert settings.private_key().reveal() == KEY
    assert settings.jwt_audience == "https://login.salesforce.com"


_NOT_A_KEY = {
    "encrypted": _RSA.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.BestAvailableEncryption(b"pass")),
    "garbage": b"not a key at all\n",
    "ec": ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()),
    "truncated": KEY.encode()[:400] + KEY.encode()[-26:],
}


@pytest.mark.parametrize("kind", ["certificate", "encrypted", "garbage", "ec", "truncated"])
@pytest.mark.parametrize("setting", ["SF_PRIVATE_KEY_PATH", "SF_PRIVATE_KEY_BASE64"])
def test_a_key_that_cannot_sign_is_refused_at_start(tmp_path, kind, setting):
    """A certificate (or an encrypted key, or anything but an RSA key) passed: every login
    then failed with jwt's InvalidKeyError — the worker dead-lettered every event, the sink
    crash-looped. Refused at start (exit 64), naming the setting, never quoting the key."""
    from sandbox.salesforce.tlsgen import jwt_keypair

    key, cert = jwt_keypair(tmp_path / "jwt")  # the emulator's key pair
    base = {"SF_CLIENT_ID": "cid", "SF_USERNAME": "u@example.com"}
    SalesforceSettings.load({**base, "SF_PRIVATE_KEY_PATH": str(key)})
    data = cert.read_bytes() if kind == "certificate" else _NOT_A_KEY[kind]
    if setting == "SF_PRIVATE_KEY_PATH":
        path = tmp_path / "key.pem"
        path.write_bytes(data)
        base[setting] = str(path)
    else:
        base[setting] = base64.b64encode(data).decode()
    with pytest.raises(ConfigError, match=f"^{setting}: ") as info:
        SalesforceSettings.load(base)
    message = str(info.value)
    assert "\n" not in message and "BEGIN" not in message
    for line in data.decode(errors="replace").splitlines():
        assert len(line) < 16 or line not in message


@pytest.mark.parametrize("argv", [["sinks", "run"], ["streams", "worker"],
                                  ["connectors", "run"]])
def test_every_process_exits_64_for_a_key_that_cannot_sign(tmp_path, argv):
    import os
    import subprocess
    import sys

    from common.settings import ROOT
    from sandbox.salesforce.tlsgen import jwt_keypair

    _key, cert = jwt_keypair(tmp_path / "jwt")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SF_", "SINK_", "WHMCS_"))}
    env.update({"SFPROV_ENV_FILE": "/nonexistent", "PYTHONPATH": str(ROOT),
                "SF_CLIENT_ID": "cid", "SF_USERNAME": "u@example.com",
                "SF_PRIVATE_KEY_PATH": str(cert), "WHMCS_API_URL": "http://w/includes/api.php",
                "WHMCS_API_IDENTIFIER": "id", "WHMCS_API_SECRET": "s"})
    proc = subprocess.run([sys.executable, "-m", *argv], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 64, proc.stderr[-2000:]
    assert "SF_PRIVATE_KEY_PATH" in proc.stderr and "BEGIN" not in proc.stderr


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


# -- bounds whose violation broke the pipeline at run time, not at start -------------------

def test_a_negative_lookup_grace_is_refused():
    # -15 with WHMCS_TIMEOUT_S=15 looked the Order up the moment the old writer's lease
    # ended, before its AddOrder could show: a second WHMCS order
    with pytest.raises(ConfigError, match="^WORKER_LOOKUP_GRACE_S: must be >= 0"):
        WorkerSettings.load({"WORKER_LOOKUP_GRACE_S": "-15"})
    assert WorkerSettings.load({"WORKER_LOOKUP_GRACE_S": "0"}).lookup_grace_s == 0


def test_the_ownership_lease_outlasts_a_heartbeat_round_and_an_intent_renewal():
    # session 30 s: heartbeats every 3 s, an intent renewed with under 1 s left → 4 s floor;
    # a 1 ms lease was never valid once a heartbeat's answer came back: every write waited
    with pytest.raises(ConfigError, match=r"^WORKER_LEASE_MARGIN_S: .*at least 4 s") as info:
        WorkerSettings.load({"WORKER_SESSION_TIMEOUT_S": "30", "WORKER_LEASE_MARGIN_S": "29.999"})
    assert "0.001" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="^WORKER_LEASE_MARGIN_S:"):
        WorkerSettings.load({"WORKER_SESSION_TIMEOUT_S": "30", "WORKER_LEASE_MARGIN_S": "26.01"})
    with pytest.raises(ConfigError, match="^WORKER_LEASE_MARGIN_S:"):
        WorkerSettings.load({"WORKER_LEASE_MARGIN_S": "-1"})
    assert WorkerSettings.load({"WORKER_SESSION_TIMEOUT_S": "30",
                                "WORKER_LEASE_MARGIN_S": "26"}).lease_margin == 26
    # the default margin (a third): a session under 3 s leaves less than heartbeat + 1 s
    with pytest.raises(ConfigError, match="^WORKER_SESSION_TIMEOUT_S:"):
        WorkerSettings.load({"WORKER_SESSION_TIMEOUT_S": "2.9"})
    for session in ("3", "6", "8", "10", "30", "150"):  # 6-10: the tests' and chaos runs'
        assert WorkerSettings.load({"WORKER_SESSION_TIMEOUT_S": session})


def test_the_lease_floor_follows_the_worker_code():
    """The floor above is derived from streams.app's heartbeat interval and
    streams.handler's renewal headroom: if either changes, the bound must follow."""
    import re
    from pathlib import Path

    from common.settings import INTENT_RENEW_BEFORE_S
    from streams.lease import RENEW_BEFORE_MS

    assert INTENT_RENEW_BEFORE_S * 1000 == RENEW_BEFORE_MS
    app = (Path(__file__).resolve().parents[2] / "streams" / "app.py").read_text()
    interval = re.search(r"broker_heartbeat_interval=(.+?),?$", app, re.MULTILINE)
    assert interval is not None
    assert interval.group(1).strip() in ("min(3.0, worker.session_timeout_s / 3)",
                                         "worker.heartbeat_interval_s")
    for session in (4.5, 9.0, 30.0):
        assert WorkerSettings.load({}, session_timeout_s=session).heartbeat_interval_s == \
            min(3.0, session / 3)


def test_the_intent_lease_leaves_room_for_its_renewal():
    # 0.0004 s is 0 ms: every send deadline already past, every Order Failed
    # WHMCS_UNAVAILABLE without a WHMCS call
    for bad in ("0.0004", "1", "1.999", "0", "-1"):
        with pytest.raises(ConfigError, match=r"^WORKER_INTENT_LEASE_S: at least 2 s"):
            WorkerSettings.load({"WORKER_INTENT_LEASE_S": bad})
    assert WorkerSettings.load({"WORKER_INTENT_LEASE_S": "2"}).intent_lease_s == 2
    assert WorkerSettings.load({"WORKER_INTENT_LEASE_S": "4"})  # tests/streams/test_worker_pause


def test_the_sweep_interval_is_at_least_a_second():
    # 0 or less fired the sweep timer back to back: a core pegged
    for bad in ("0", "-5", "0.5"):
        with pytest.raises(ConfigError, match="^WORKER_SWEEP_INTERVAL_S: at least 1 s"):
            WorkerSettings.load({"WORKER_SWEEP_INTERVAL_S": bad})
    assert WorkerSettings.load({"WORKER_SWEEP_INTERVAL_S": "1"}).sweep_interval_s == 1


def test_a_stall_timeout_within_salesforce_keepalive_interval_warns(caplog):
    # at or under 270 s the watchdog resubscribes before a quiet stream's keepalive comes,
    # so keepalive positions are never stored. A warning, not a refusal: the sandbox tests
    # set 3 s against a sandbox that sends keepalives every second
    for value in ("270", "3"):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="common.settings"):
            loaded = ConnectorSettings.load({"SF_PUBSUB_STALL_TIMEOUT_S": value})
        assert loaded.keepalive_timeout_s == float(value)
        warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warned) == 1 and warned[0].startswith("SF_PUBSUB_STALL_TIMEOUT_S: ")
        assert "270" in warned[0]
    for value in ("", "271"):  # the default (300) and just above
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="common.settings"):
            ConnectorSettings.load({"SF_PUBSUB_STALL_TIMEOUT_S": value})
        assert not caplog.records
    assert ConnectorSettings.load({}).keepalive_timeout_s > 270


def test_the_sink_session_timeout_fits_its_max_poll_interval():
    import re
    from pathlib import Path

    from confluent_kafka import Consumer, KafkaException

    # longer than 300000 ms: librdkafka refused the Consumer, a traceback, restarted forever
    with pytest.raises(ConfigError, match=r"^SINK_SESSION_TIMEOUT_MS: at most 300000"):
        SinkSettings.load({"SINK_SESSION_TIMEOUT_MS": "300001"})
    assert SinkSettings.load({"SINK_SESSION_TIMEOUT_MS": "300000"}).session_timeout_ms == 300000
    from common.settings import SINK_MAX_POLL_INTERVAL_MS

    # the bound is the sink's own max.poll.interval.ms, and librdkafka's rule
    app = (Path(__file__).resolve().parents[2] / "sinks" / "app.py").read_text()
    poll = re.search(r'"max\.poll\.interval\.ms":\s*([^,\n]+)', app)
    assert poll is not None
    assert poll.group(1).strip() in (str(SINK_MAX_POLL_INTERVAL_MS),
                                     f"{SINK_MAX_POLL_INTERVAL_MS:_}",
                                     "SINK_MAX_POLL_INTERVAL_MS")
    with pytest.raises(KafkaException, match="max.poll.interval.ms"):
        Consumer({"group.id": "g", "session.timeout.ms": SINK_MAX_POLL_INTERVAL_MS + 1,
                  "max.poll.interval.ms": SINK_MAX_POLL_INTERVAL_MS})
