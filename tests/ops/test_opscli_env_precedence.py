"""`make topics` and `sfprov` find the broker the same way (README): the settings `make up`
recorded (.state/pipeline.env) are defaults below the environment and .env. sfprov put them
in its environment, above .env: after .env named another cluster, `make topics` went there
while `sfprov replay --execute` and `dlq requeue` still went to the local broker, as the
recorded read-only principal over the admin's credentials in .env."""

from __future__ import annotations

from pathlib import Path

import pytest

from ops import cli, stack
from tests.ops.test_stack_config import sfprov_bootstrap, topics_bootstrap

RECORDED = ("KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092\nKAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT\n"
            "KAFKA_SASL_MECHANISM=SCRAM-SHA-512\nKAFKA_SASL_USERNAME=sfprov-ops\n"
            "KAFKA_SASL_PASSWORD=ops-pw\nSF_LOGIN_URL=https://127.0.0.1:8443\n")
NAMES = ("KAFKA_BOOTSTRAP_SERVERS", "KAFKA_PORT", "KAFKA_SECURITY_PROTOCOL",
         "KAFKA_SASL_MECHANISM", "KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD", "SF_LOGIN_URL")


@pytest.fixture()
def dotenv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A secured `make up`'s records, an empty .env (the test writes it), nothing set."""
    env_file = tmp_path / ".env"
    env_file.write_text("")
    monkeypatch.setenv("SFPROV_ENV_FILE", str(env_file))
    for name in NAMES:
        monkeypatch.setenv(name, "")  # restored afterwards, also when sfprov sets it
        monkeypatch.delenv(name)
    monkeypatch.setattr(stack, "PIPELINE_ENV", tmp_path / "pipeline.env")
    stack.PIPELINE_ENV.write_text(RECORDED)
    return env_file


def sfprov_user() -> str:
    return cli.kafka_settings(cli.build_parser().parse_args(["lag"])).sasl_username


def test_a_broker_named_in_dotenv_wins_over_the_recorded_one(dotenv, monkeypatch):
    dotenv.write_text("KAFKA_BOOTSTRAP_SERVERS=staging-kafka:9092\n"
                      "KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT\nKAFKA_SASL_MECHANISM=PLAIN\n"
                      "KAFKA_SASL_USERNAME=sfprov-admin\nKAFKA_SASL_PASSWORD=admin-pw\n")
    assert topics_bootstrap(monkeypatch) == "staging-kafka:9092"
    assert sfprov_bootstrap() == "staging-kafka:9092"
    assert sfprov_user() == "sfprov-admin"  # not the recorded read-only principal


def test_the_recorded_credentials_go_only_to_their_broker(dotenv, monkeypatch):
    """.env names another broker and no credentials (a plaintext one): the local broker's
    principal and password are not sent there."""
    dotenv.write_text("KAFKA_BOOTSTRAP_SERVERS=staging-kafka:9092\n")
    assert topics_bootstrap(monkeypatch) == sfprov_bootstrap() == "staging-kafka:9092"
    assert sfprov_user() == ""
    assert cli.os.environ.get("KAFKA_SASL_PASSWORD") is None


def test_admin_credentials_in_dotenv_win_on_the_local_broker(dotenv, monkeypatch):
    """.env holds the admin's credentials, no broker: the recorded one, as the admin."""
    dotenv.write_text("KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT\nKAFKA_SASL_MECHANISM=SCRAM-SHA-512\n"
                      "KAFKA_SASL_USERNAME=sfprov-admin\nKAFKA_SASL_PASSWORD=admin-pw\n")
    assert topics_bootstrap(monkeypatch) == sfprov_bootstrap() == "127.0.0.1:9092"
    assert sfprov_user() == "sfprov-admin"


def test_the_recorded_settings_still_apply_without_dotenv(dotenv, monkeypatch):
    """Nothing named: the recorded broker and principal, and the sandboxes' settings."""
    assert topics_bootstrap(monkeypatch) == sfprov_bootstrap() == "127.0.0.1:9092"
    assert sfprov_user() == "sfprov-ops"
    assert cli.os.environ["SF_LOGIN_URL"] == "https://127.0.0.1:8443"


def test_the_sandboxes_recorded_settings_still_win_over_dotenv(dotenv):
    """What the stack's sandboxes run is kept over .env (ops.stack.sandbox_env); the process
    environment still wins."""
    dotenv.write_text("SF_LOGIN_URL=https://login.salesforce.com\n")
    cli.load_local_stack_env()
    assert cli.os.environ["SF_LOGIN_URL"] == "https://127.0.0.1:8443"


def test_a_blank_line_in_dotenv_is_unset_and_leaves_the_recorded_broker(dotenv, monkeypatch):
    """`KAFKA_BOOTSTRAP_SERVERS=` (blank: unset, as everywhere) made sfprov drop the recorded
    broker and every recorded credential: 127.0.0.1:9092 with no SASL on a secured broker
    that `make up` had put elsewhere."""
    stack.PIPELINE_ENV.write_text(RECORDED.replace("127.0.0.1:9092", "127.0.0.1:9192"))
    dotenv.write_text("KAFKA_BOOTSTRAP_SERVERS=\nKAFKA_SASL_USERNAME= \n")
    assert sfprov_bootstrap() == "127.0.0.1:9192"
    assert sfprov_user() == "sfprov-ops"


def test_an_exported_blank_is_unset_too(dotenv, monkeypatch):
    """`KAFKA_BOOTSTRAP_SERVERS=` exported in the shell: sfprov went to 127.0.0.1:9092 with
    the recorded broker's credentials (the blank kept the recorded address out, not them);
    make topics went there too on a blank .env line."""
    stack.PIPELINE_ENV.write_text(RECORDED.replace("127.0.0.1:9092", "127.0.0.1:9192"))
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "")
    assert sfprov_bootstrap() == "127.0.0.1:9192" and sfprov_user() == "sfprov-ops"
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS")
    dotenv.write_text("KAFKA_BOOTSTRAP_SERVERS=\n")
    assert topics_bootstrap(monkeypatch) == "127.0.0.1:9192"


def test_the_recorded_credentials_never_go_to_a_broker_named_with_b(dotenv, monkeypatch):
    """`sfprov -b staging-kafka:9092`: the recorded ops principal and its password (and its
    SASL protocol) went to that broker; on the recorded one (`-b` naming it) they apply."""
    cli.load_local_stack_env(["-b", "staging-kafka:9092", "lag"])
    assert cli.os.environ.get("KAFKA_SASL_USERNAME") is None
    assert cli.os.environ.get("KAFKA_SASL_PASSWORD") is None
    cli.load_local_stack_env(["--bootstrap-server=127.0.0.1:9092", "lag"])
    assert cli.os.environ.get("KAFKA_SASL_USERNAME") == "sfprov-ops"
