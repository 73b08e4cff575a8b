"""Settings fail fast with one line naming the variable; secrets never print."""

from __future__ import annotations

import asyncio
import base64
import io
import logging

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from common.envparse import Secret, load_dotenv_file
from common.errors import ConfigError
from common.log import setup_logging
from common.settings import (
    CommonSettings,
    ConnectorSettings,
    KafkaSettings,
    SalesforceSettings,
    SinkSettings,
    WhmcsSettings,
    WorkerSettings,
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
    # as `base64 key.pem` writes it: wrapped at 76 characters, a newline at the end
    wrapped = "\n".join(encoded[i:i + 76] for i in range(0, len(encoded), 76)) + "\n"
    assert SalesforceSettings.load({**base, "SF_PRIVATE_KEY_BASE64": wrapped}
                                   ).private_key().reveal() == KEY



@pytest.mark.parametrize(("login_url", "audience"), [
    ("https://login.salesforce.com", "https://login.salesforce.com"),
    ("https://test.salesforce.com/", "https://test.salesforce.com"),
    # Salesforce refuses a My Domain audience ("audience is invalid"): the login server's
    ("https://acme.my.salesforce.com", "https://login.salesforce.com"),
    ("https://ACME.develop.my.salesforce.com", "https://login.salesforce.com"),
    ("https://acme--uat.sandbox.my.salesforce.com", "https://test.salesforce.com"),
    ("https://acme--uat.my.salesforce.com", "https://test.salesforce.com"),  # before enhanced
    ("https://fun-drive-1234.scratch.my.salesforce.com", "https://test.salesforce.com"),
    # an emulator or a gateway is its own audience, without a gateway's credentials
    ("https://127.0.0.1:8443", "https://127.0.0.1:8443"),
    ("https://gw:pw@sf-gateway.corp", "https://sf-gateway.corp"),
])
def test_the_jwt_audience_is_the_login_servers_name(login_url, audience):
    base = {"SF_CLIENT_ID": "cid", "SF_USERNAME": "u@example.com",
            "SF_PRIVATE_KEY_BASE64": base64.b64encode(KEY.encode()).decode()}
    assert SalesforceSettings.load({**base, "SF_LOGIN_URL": login_url}).jwt_audience == audience
    chosen = {**base, "SF_LOGIN_URL": login_url, "SF_AUDIENCE": "https://aud.example/"}
    assert SalesforceSettings.load(chosen).jwt_audience == "https://aud.example"

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

    from common.envparse import ROOT
    from sandbox.salesforce.tlsgen import jwt_keypair

    _key, cert = jwt_keypair(tmp_path / "jwt")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SF_", "SINK_", "WHMCS_"))}
    env.update({"SFPROV_ENV_FILE": os.devnull, "PYTHONPATH": str(ROOT),
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
    # a day: replay from Kafka would find less than Salesforce itself still holds
    ({"KAFKA_REQUESTS_RETENTION_MS": "86400000"}, "KAFKA_REQUESTS_RETENTION_MS"),
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
    # without its scheme the OTLP exporter posted to nowhere, a warning per batch
    (CommonSettings, {"SFPROV_TRACING_OTLP_ENDPOINT": "collector:4318"},
     "SFPROV_TRACING_OTLP_ENDPOINT"),
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


@pytest.mark.parametrize("rf,isr,expected", [("1", None, 1), ("2", None, 1), ("3", None, 2),
                                               ("5", None, 2), ("3", "1", 1), ("3", "3", 3)])
def test_min_insync_replicas_unset_follows_the_replication_factor(rf, isr, expected):
    """``KAFKA_REPLICATION_FACTOR=3`` alone kept min.insync.replicas at 1: an ``acks=all``
    write could be acknowledged by the leader alone and lost with it. Unset, it is 2 from
    three replicas on; a value given is kept."""
    env = {"KAFKA_REPLICATION_FACTOR": rf, **({"KAFKA_MIN_INSYNC_REPLICAS": isr} if isr else {})}
    assert KafkaSettings.load(env).min_insync_replicas == expected


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
    # credentials in a URL (the registry's, as Confluent Cloud documents it): masked in repr,
    # the value itself still usable
    url = "https://KEY:S3CRET@psrc.example.cloud"
    kafka = KafkaSettings.load({"SCHEMA_REGISTRY_URL": url})
    assert kafka.schema_registry_url == url
    for text in (repr(kafka), str(kafka), f"{kafka}"):
        assert "S3CRET" not in text and "KEY:" not in text
        assert "schema_registry_url='https://***@psrc.example.cloud'" in text
    # the WHMCS transport would never send them (WHMCS authenticates in the body): refused,
    # naming the variable, without the value
    with pytest.raises(ConfigError) as info:
        WhmcsSettings.load({**WHMCS, "WHMCS_API_URL": "https://u:pw-9@w/includes/api.php"})
    assert str(info.value).startswith("WHMCS_API_URL:") and "not sent" in str(info.value)
    assert "pw-9" not in str(info.value)
    assert "bootstrap_servers='localhost:9092'" in repr(kafka)  # the rest as before


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


def test_the_reconcile_age_is_not_negative_nor_beyond_ten_years():
    # -900 re-requested brand-new Activating Orders on every periodic pass; 1e12 made every
    # pass fail ("year out of range" building its SOQL)
    name = "CONNECTOR_RECONCILE_OLDER_THAN_S"
    with pytest.raises(ConfigError, match=f"^{name}: invalid value: must be >= 0"):
        ConnectorSettings.load({name: "-900"})
    for huge in ("1e12", "315360001"):
        with pytest.raises(ConfigError, match=f"^{name}: at most 315360000 s \\(10 years\\)"):
            ConnectorSettings.load({name: huge})
    with pytest.raises(ConfigError, match=f"^{name}: "):
        ConnectorSettings.load({}, reconcile_older_than_s=-1.0)
    for edge in ("0", "315360000"):
        assert ConnectorSettings.load({name: edge}).reconcile_older_than_s == float(edge)


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


# -- the .env file ---------------------------------------------------------------------------

def test_an_env_file_named_but_missing_is_refused(tmp_path, monkeypatch):
    """``SFPROV_ENV_FILE`` pointing nowhere was ignored: `make up` then ran sandbox mode and
    reported healthy instead of the stack the file describes. The default ``.env`` may be
    missing; an empty file (or /dev/null) reads as no settings."""
    from common import envparse as module
    from common.envparse import environment

    missing = tmp_path / "missing.env"
    monkeypatch.setenv("SFPROV_ENV_FILE", str(missing))
    with pytest.raises(ConfigError, match="^SFPROV_ENV_FILE: no such file") as info:
        KafkaSettings.load()
    assert str(missing) in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="^SFPROV_ENV_FILE: no such file"):
        environment()
    (tmp_path / "empty.env").write_text("")
    for empty in (str(tmp_path / "empty.env"), "/dev/null"):
        monkeypatch.setenv("SFPROV_ENV_FILE", empty)
        assert load_dotenv_file() == {}
        assert KafkaSettings.load().partitions == 6
    monkeypatch.delenv("SFPROV_ENV_FILE")
    monkeypatch.setattr(module, "HOME", tmp_path / "checkout")  # no .env there: fine
    assert load_dotenv_file() == {} and KafkaSettings.load().partitions == 6


@pytest.mark.parametrize("named", [True, False])
def test_an_env_file_that_cannot_be_read_is_a_config_error(tmp_path, monkeypatch, named):
    """A Latin-1 (or unreadable) .env raised UnicodeDecodeError (PermissionError) through
    start-up: a traceback, exit 1, restarted for ever. Now one line naming the file, without
    the value that would not decode."""
    from common import envparse as module

    monkeypatch.setattr(module, "HOME", tmp_path)
    path = tmp_path / ".env"
    if named:
        path = tmp_path / "prod.env"
        monkeypatch.setenv("SFPROV_ENV_FILE", str(path))
    else:
        monkeypatch.delenv("SFPROV_ENV_FILE", raising=False)
    path.write_bytes(b"KAFKA_PARTITIONS=3\nWHMCS_API_SECRET=caf\xe9-s3cr3t\n")
    with pytest.raises(ConfigError) as info:
        KafkaSettings.load()
    message = str(info.value)
    assert message.startswith("SFPROV_ENV_FILE: " if named else ".env: "), message
    assert str(path) in message and "UTF-8" in message and "line 2" in message
    assert "s3cr3t" not in message and "\n" not in message
    path.unlink()
    path.mkdir()  # read_text raises IsADirectoryError, an OSError like PermissionError
    with pytest.raises(ConfigError, match="cannot read") as info:
        KafkaSettings.load()
    assert str(path) in str(info.value)


def test_a_process_exits_64_for_a_missing_env_file(tmp_path):
    import os
    import subprocess
    import sys

    from common.envparse import ROOT

    env = {k: v for k, v in os.environ.items() if not k.startswith(("SF_", "SINK_", "KAFKA_"))}
    env.update({"SFPROV_ENV_FILE": str(tmp_path / "prod.env"), "PYTHONPATH": str(ROOT)})
    proc = subprocess.run([sys.executable, "-m", "sinks", "run"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 64, proc.stderr[-2000:]
    assert "SFPROV_ENV_FILE: no such file" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("command", [["ops.stack", "status"], ["ops.cli", "lag"],
                                     ["ops.topics"], ["ops.kafka_local", "status"]])
def test_the_operator_tools_say_a_missing_env_file_in_one_line(tmp_path, command):
    """The tools read the env file when their modules load (the state directory): a
    missing one was a traceback at import — `make status`, `make down`, every `sfprov`."""
    import os
    import subprocess
    import sys

    from common.envparse import ROOT

    env = {k: v for k, v in os.environ.items() if k != "SFPROV_STATE_DIR"}
    env.update({"SFPROV_ENV_FILE": str(tmp_path / "prod.env"), "PYTHONPATH": str(ROOT)})
    proc = subprocess.run([sys.executable, "-m", *command], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode in (1, 64), proc.stderr[-2000:]
    assert "SFPROV_ENV_FILE: no such file" in proc.stderr and "Traceback" not in proc.stderr


def test_inline_comments_are_stripped_as_docker_compose_does(tmp_path):
    """``KAFKA_TOPIC_PREFIX=staging. # per env`` read as 'staging. # per env' here while
    docker compose (the same .env) reads 'staging.': two prefixes for one file. `` #`` starts
    a comment in an unquoted value; a quoted value ends at its quote."""
    path = tmp_path / ".env"
    path.write_text("KAFKA_TOPIC_PREFIX=staging. # per env\n"
                    "SINK_BATCH_SIZE=100 # smaller\n"
                    "WHMCS_API_SECRET=\"s3cr#t\" # prod\n"
                    "A=abc#def\n"
                    "B='x # y'\n"
                    "C= # nothing\n"
                    "D=\"say \\\"hi\\\"\"\n"
                    "E=tab\t# comment\n"
                    "F='it''s'\n")
    values = load_dotenv_file(path)
    assert values["KAFKA_TOPIC_PREFIX"] == "staging."
    assert values["SINK_BATCH_SIZE"] == "100"
    assert values["WHMCS_API_SECRET"] == "s3cr#t"
    assert values["A"] == "abc#def" and values["B"] == "x # y"
    # compose cuts at " #" in the value, leading blanks trimmed: not at a tab, nor at its start
    assert values["C"] == "# nothing" and values["E"] == "tab\t# comment"
    assert values["D"] == 'say \\"hi\\"'  # as before: escapes are kept
    assert values["F"] == "it''s"  # not a quoted value followed by a comment: kept as before


# -- values the broker, gRPC or the OS refused only at run time ------------------------------

def test_the_salesforce_ca_bundle_is_checked(tmp_path):
    """``SF_CA_BUNDLE`` naming a missing file raised FileNotFoundError in SalesforceClient:
    a traceback, exit 1, restarted for ever."""
    from sandbox.salesforce.tlsgen import jwt_keypair

    key, cert = jwt_keypair(tmp_path / "jwt")
    base = {"SF_CLIENT_ID": "cid", "SF_USERNAME": "u@example.com",
            "SF_PRIVATE_KEY_PATH": str(key)}
    assert SalesforceSettings.load({**base, "SF_CA_BUNDLE": str(cert)}).ca_bundle == str(cert)
    with pytest.raises(ConfigError, match="^SF_CA_BUNDLE: no such file"):
        SalesforceSettings.load({**base, "SF_CA_BUNDLE": str(tmp_path / "ca.pem")})
    broken = tmp_path / "broken.pem"
    broken.write_text("-----BEGIN CERTIFICATE-----\n")
    for bad in (broken, key):  # a truncated certificate; a key, not a certificate
        with pytest.raises(ConfigError, match="^SF_CA_BUNDLE: ") as info:
            SalesforceSettings.load({**base, "SF_CA_BUNDLE": str(bad)})
        assert str(bad) in str(info.value) and "BEGIN" not in str(info.value)


@pytest.mark.parametrize("endpoint", [
    "https://api.pubsub.salesforce.com:7443",  # grpc: UNAVAILABLE, retried for ever
    "api.pubsub.salesforce.com", "api.pubsub.salesforce.com:", "host:0", "host:65536",
    "host:port", "host name:7443", "[::1]", "::1:7443", "[nothost]:7443", "host:7443/path",
])
def test_the_pubsub_endpoint_is_host_and_port(endpoint):
    with pytest.raises(ConfigError, match="^SF_PUBSUB_ENDPOINT: "):
        ConnectorSettings.load({"SF_PUBSUB_ENDPOINT": endpoint})


def test_the_pubsub_endpoints_that_stay_allowed():
    for endpoint in ("api.pubsub.salesforce.com:7443", "127.0.0.1:7443", "[::1]:7443",
                     "salesforce-sandbox:7443", "localhost:65535"):
        assert ConnectorSettings.load({"SF_PUBSUB_ENDPOINT": endpoint}).pubsub_endpoint == \
            endpoint
    assert ConnectorSettings.load({"SF_PUBSUB_ENDPOINT": " h:1 "}).pubsub_endpoint == "h:1"


@pytest.mark.parametrize("section,env,name", [
    (KafkaSettings, {"KAFKA_TOPIC_PREFIX": "dev env/"}, "KAFKA_TOPIC_PREFIX"),
    (KafkaSettings, {"KAFKA_TOPIC_PREFIX": "staging. # per env"}, "KAFKA_TOPIC_PREFIX"),
    (KafkaSettings, {"KAFKA_TOPIC_REQUESTS": "a b"}, "KAFKA_TOPIC_REQUESTS"),
    (KafkaSettings, {"KAFKA_TOPIC_OUTCOMES": "out/comes"}, "KAFKA_TOPIC_OUTCOMES"),
    (KafkaSettings, {"KAFKA_TOPIC_DEAD_LETTERS": "dl:1"}, "KAFKA_TOPIC_DEAD_LETTERS"),
    (KafkaSettings, {"KAFKA_TOPIC_CONNECTOR_OFFSETS": "o*"}, "KAFKA_TOPIC_CONNECTOR_OFFSETS"),
    (KafkaSettings, {"KAFKA_TOPIC_REPLAY_GAPS": "gäps"}, "KAFKA_TOPIC_REPLAY_GAPS"),
    (KafkaSettings, {"KAFKA_TOPIC_REPLAY_GAPS": ".."}, "KAFKA_TOPIC_REPLAY_GAPS"),
    (KafkaSettings, {"KAFKA_TOPIC_OUTCOMES": "o" * 250}, "KAFKA_TOPIC_OUTCOMES"),
    (KafkaSettings, {"KAFKA_TOPIC_PREFIX": "p" * 230}, "KAFKA_TOPIC_PREFIX"),
    (WorkerSettings, {"WORKER_APP_ID": "my app"}, "WORKER_APP_ID"),
    (WorkerSettings, {"WORKER_APP_ID": "w" * 230}, "WORKER_APP_ID"),
])
def test_names_the_broker_would_refuse_are_refused_at_start(section, env, name):
    """A prefix or topic name with a space or a slash: the broker answered INVALID_TOPIC at
    the first create, exit 1, restarted for ever. Every topic name — the worker's changelog
    and leader topics too — must be [A-Za-z0-9._-], at most 249 characters."""
    with pytest.raises(ConfigError, match=f"^{name}: ") as info:
        section.load(env)
    assert "\n" not in str(info.value)


def test_topic_names_that_stay_allowed():
    k = KafkaSettings.load({"KAFKA_TOPIC_PREFIX": "staging_eu-1."})
    assert k.requests == "staging_eu-1.salesforce.order-provision-requested"
    assert KafkaSettings.load({"KAFKA_TOPIC_PREFIX": "p" * 200}).topic_prefix == "p" * 200
    assert WorkerSettings.load({"WORKER_APP_ID": "sfprov-worker_2.eu"}).app_id


def test_the_worker_topic_suffixes_follow_the_code():
    """The app id's bound counts the longest name the worker derives from it."""
    from common.kafka import changelog_topics
    from common.settings import WORKER_TOPIC_SUFFIXES
    from ops.acls import worker_topics

    kafka = KafkaSettings.load({})
    derived = worker_topics(kafka, "APP")
    assert {t.name for t in changelog_topics(kafka, "APP")} < set(derived)
    for name in derived:
        assert name.startswith("APP") and name[3:] in WORKER_TOPIC_SUFFIXES, name


@pytest.mark.parametrize("env", [
    {"KAFKA_SASL_USERNAME": "u", "KAFKA_SASL_PASSWORD": "pa55word"},
    {"KAFKA_SASL_USERNAME": "u"},
    {"KAFKA_SASL_PASSWORD": "pa55word"},
    {"KAFKA_SASL_MECHANISM": "SCRAM-SHA-512"},
    {"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SASL_USERNAME": "u",
     "KAFKA_SASL_PASSWORD": "pa55word"},
    {"KAFKA_SSL_CA_LOCATION": "CA"},
    {"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SASL_USERNAME": "u",
     "KAFKA_SASL_PASSWORD": "p", "KAFKA_SSL_CA_LOCATION": "CA"},
    {"KAFKA_SSL_CERTIFICATE_LOCATION": "CA", "KAFKA_SSL_KEY_LOCATION": "CA"},
    {"KAFKA_SSL_KEY_PASSWORD": "pa55word"},
])
def test_security_settings_the_protocol_would_drop_are_refused(tmp_path, env):
    """SASL credentials or TLS files with a protocol that does not use them were dropped
    without a word: the process connected in plain text, or was refused by the broker."""
    ca = tmp_path / "ca.pem"
    ca.write_text("")
    env = {k: str(ca) if v == "CA" else v for k, v in env.items()}
    with pytest.raises(ConfigError, match="^KAFKA_SECURITY_PROTOCOL: ") as info:
        KafkaSettings.load(env)
    message = str(info.value)
    assert "\n" not in message and "pa55word" not in message
    assert "SASL_SSL" in message


def test_security_settings_used_by_their_protocol_stay_allowed(tmp_path):
    from ops.kafka_secure import BrokerSecurity

    ca = BrokerSecurity(tmp_path / "secure").ensure().ca_file  # a CA the TLS library reads
    sasl = {"KAFKA_SASL_USERNAME": "u", "KAFKA_SASL_PASSWORD": "p",
            "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512"}
    assert KafkaSettings.load({**sasl, "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT"})
    assert KafkaSettings.load({**sasl, "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                               "KAFKA_SSL_CA_LOCATION": str(ca)})
    assert KafkaSettings.load({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CA_LOCATION": str(ca)})
    # the registry's CA is not the brokers': allowed with any protocol
    assert KafkaSettings.load({"SCHEMA_REGISTRY_CA_LOCATION": str(ca)})
    assert KafkaSettings.load({"KAFKA_SASL_MECHANISM": "PLAIN"})  # the default, said aloud


@pytest.mark.parametrize("section,name", [(ConnectorSettings, "CONNECTOR_HTTP_PORT"),
                                          (WorkerSettings, "WORKER_HTTP_PORT"),
                                          (SinkSettings, "SINK_HTTP_PORT")])
def test_http_ports_are_ports(section, name):
    """70000 or -1 passed, and the health server raised OverflowError at bind: exit 1, for
    ever."""
    for bad in ("70000", "65536", "-1", "x", "9.5"):
        with pytest.raises(ConfigError, match=f"^{name}: "):
            section.load({name: bad})
    for good, port in (("0", 0), ("65535", 65535), (" 9200", 9200)):
        assert section.load({name: good}).http_port == port


def test_the_faust_log_level_is_a_worker_setting():
    """Read from the process environment only (ignored in .env under `make up`), and
    ``VERBOSE`` raised ValueError from logging: a traceback, exit 1, restarted for ever."""
    assert WorkerSettings.load({}).faust_log_level == ""  # faust's loggers follow LOG_LEVEL
    for raw in ("info", "DEBUG", " warning ", "critical", "Error"):
        assert WorkerSettings.load({"WORKER_FAUST_LOG_LEVEL": raw}).faust_log_level == \
            raw.strip().upper()
    with pytest.raises(ConfigError, match="^WORKER_FAUST_LOG_LEVEL: "):
        WorkerSettings.load({"WORKER_FAUST_LOG_LEVEL": "VERBOSE"})


def test_the_worker_reads_its_faust_log_level_from_the_env_file(tmp_path):
    import os
    import subprocess
    import sys

    from common.envparse import ROOT

    env_file = tmp_path / "worker.env"
    env_file.write_text("WORKER_FAUST_LOG_LEVEL=VERBOSE\n")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SF_", "WORKER_", "KAFKA_", "WHMCS_"))}
    env.update({"SFPROV_ENV_FILE": str(env_file), "PYTHONPATH": str(ROOT)})
    proc = subprocess.run([sys.executable, "-m", "streams", "worker"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 64, proc.stderr[-2000:]
    assert "WORKER_FAUST_LOG_LEVEL" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize(("raw", "value"), [
    ("'s3cr3t\\'", "s3cr3t\\"),        # single quotes take no escapes
    ('"C:\\dir\\\\"', "C:\\dir\\\\"),   # an escaped backslash before the closing quote
    ('"s3cr#t" # prod', "s3cr#t"),
    ("'a b' # note", "a b"),
])
def test_a_quoted_value_ending_in_a_backslash_loses_its_quotes(tmp_path, raw, value):
    """``WHMCS_API_SECRET='s3cr3t\\'`` kept its quotes (the closing quote read as escaped):
    the secret sent was wrong."""
    from common.envparse import load_dotenv_file

    path = tmp_path / ".env"
    path.write_text(f"A={raw}\n")
    assert load_dotenv_file(path) == {"A": value}
