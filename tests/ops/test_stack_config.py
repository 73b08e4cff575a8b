"""What `make up` configures, the tools around it follow: ``python -m ops.kafka_local start``
builds the broker `make up` would (it ignored ``KAFKA_LOCAL_SECURE`` and started it
unsecured, which `make up` then refused until `make clean`), and `make topics` and `sfprov`
find the broker on ``KAFKA_PORT`` — also when it was given to `make up` alone (they asked
localhost:9092 whenever no pipeline.env was written, i.e. with real credentials)."""

from __future__ import annotations

import types
from pathlib import Path

import pytest

from ops import cli, kafka_local, stack, topics


@pytest.fixture(autouse=True)
def scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No developer's .env, no running stack's records, nothing the environment sets."""
    monkeypatch.setenv("SFPROV_ENV_FILE", "/dev/null")  # an empty file
    for name in ("KAFKA_BOOTSTRAP_SERVERS", "KAFKA_PORT", "KAFKA_LOCAL_SECURE", "SF_CLIENT_ID"):
        monkeypatch.setenv(name, "")  # restored afterwards, also when sfprov sets it
        monkeypatch.delenv(name)
    monkeypatch.setattr(stack, "PIPELINE_ENV", tmp_path / "pipeline.env")


def started_by_hand(home: Path, monkeypatch: pytest.MonkeyPatch) -> kafka_local.LocalBroker:
    """The broker ``python -m ops.kafka_local start --dir HOME`` starts (not started here)."""
    seen: list[kafka_local.LocalBroker] = []
    monkeypatch.setattr(kafka_local.LocalBroker, "start",
                        lambda self, **kw: seen.append(self) or self)
    monkeypatch.setattr(kafka_local.LocalBroker, "running_pid", lambda self: None)
    assert kafka_local.main(["start", "--dir", str(home)]) == 0
    return seen[0]


def test_kafka_local_start_is_secured_as_make_up_would(tmp_path, monkeypatch):
    monkeypatch.setenv("KAFKA_LOCAL_SECURE", "true")
    broker = started_by_hand(tmp_path / "broker", monkeypatch)
    assert broker.security is not None, "kafka_local start ignored KAFKA_LOCAL_SECURE"
    assert "StandardAuthorizer" in broker._secured(broker._properties())
    assert stack.secure_broker_ready(broker) is None


def test_kafka_local_start_is_plain_without_it(tmp_path, monkeypatch):
    monkeypatch.setenv("KAFKA_PORT", "19092")
    broker = started_by_hand(tmp_path / "broker", monkeypatch)
    assert broker.security is None and broker.bootstrap == "127.0.0.1:19092"


def test_kafka_local_start_refuses_a_plain_broker_secured(tmp_path, monkeypatch, capsys):
    """As `make up` does: SCRAM users are made when the storage is formatted."""
    home = tmp_path / "broker"
    (home / "data").mkdir(parents=True)
    (home / "data" / "meta.properties").write_text("formatted\n")
    (home / "server.properties").write_text("process.roles=broker,controller\n")
    monkeypatch.setenv("KAFKA_LOCAL_SECURE", "true")
    monkeypatch.setattr(kafka_local.LocalBroker, "running_pid", lambda self: None)
    monkeypatch.setattr(kafka_local.LocalBroker, "start", lambda self, **kw: pytest.fail("started"))
    assert kafka_local.main(["start", "--dir", str(home)]) == 1
    assert "formatted without SCRAM users; run `make clean`" in capsys.readouterr().err


def topics_bootstrap(monkeypatch: pytest.MonkeyPatch) -> str:
    """The broker ``make topics`` (``python -m ops.topics``) goes to."""
    seen = []
    monkeypatch.setattr(topics, "ensure_topics", lambda settings, **_kw: seen.append(settings)
                        or types.SimpleNamespace(created=[], drift=[], ok=True, unsafe=[],
                                              partitions={}))
    assert topics.main([]) == 0
    return str(seen[0].bootstrap_servers)


def sfprov_bootstrap() -> str:
    """The broker ``sfprov lag`` goes to."""
    cli.load_local_stack_env()
    return cli.kafka_settings(cli.build_parser().parse_args(["lag"])).bootstrap_servers


def test_topics_and_sfprov_follow_kafka_port(monkeypatch):
    monkeypatch.setenv("KAFKA_PORT", "19092")
    assert topics_bootstrap(monkeypatch) == "127.0.0.1:19092"
    assert sfprov_bootstrap() == "127.0.0.1:19092"
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka:9092")      # it names the broker
    assert topics_bootstrap(monkeypatch) == "kafka:9092"
    assert sfprov_bootstrap() == "kafka:9092"


def test_they_follow_a_kafka_port_given_to_make_up_alone(monkeypatch):
    """`KAFKA_PORT=19092 make up` with real credentials (no sandboxes): pipeline.env records
    the bootstrap address, and nothing secret."""
    monkeypatch.setenv("SF_CLIENT_ID", "a-real-client")
    monkeypatch.setenv("KAFKA_PORT", "19092")
    stack.plan(stack.environment())
    assert stack.PIPELINE_ENV.read_text() == "KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:19092\n"
    assert stack.PIPELINE_ENV.stat().st_mode & 0o777 == 0o600
    monkeypatch.delenv("KAFKA_PORT")                                  # a later shell
    assert topics_bootstrap(monkeypatch) == "127.0.0.1:19092"
    assert sfprov_bootstrap() == "127.0.0.1:19092"


def test_an_empty_kafka_port_is_the_default(tmp_path, monkeypatch):
    """``KAFKA_PORT=`` (as .env.example-style files leave it) raised ValueError from int('')
    in `make up` and ``python -m ops.kafka_local``; local_bootstrap already read it as 9092."""
    monkeypatch.setenv("KAFKA_PORT", "")
    monkeypatch.setenv("KAFKA_CONTROLLER_PORT", "")
    assert stack.broker(tmp_path / "broker").port == 9092
    assert kafka_local.local_bootstrap({"KAFKA_PORT": ""}) == "127.0.0.1:9092"
    broker = started_by_hand(tmp_path / "by-hand", monkeypatch)
    assert broker.port == 9092


@pytest.mark.parametrize("formatted", ["scram", "plain"])
def test_a_secured_start_reads_how_the_storage_was_formatted(tmp_path, monkeypatch, formatted):
    """A store formatted with SCRAM users, then started once without KAFKA_LOCAL_SECURE,
    still has its users: the refusal (and its advice to `make clean`, which deletes the
    local topics) read the server.properties the unsecured start had rewritten."""
    home = tmp_path / "broker"
    monkeypatch.setattr(kafka_local, "ensure_jars", lambda state_dir: None)
    monkeypatch.setattr(kafka_local.LocalBroker, "_classpath", lambda self: "")

    def format_storage(argv, **kwargs):
        (home / "data").mkdir(parents=True, exist_ok=True)
        (home / "data" / "meta.properties").write_text("formatted\n")
        return types.SimpleNamespace(returncode=0, stdout="", stderr="")

    monkeypatch.setattr(kafka_local.subprocess, "run", format_storage)
    if formatted == "scram":
        monkeypatch.setenv("KAFKA_LOCAL_SECURE", "true")
    stack.broker(home).prepare()                      # the first start formats the storage
    monkeypatch.delenv("KAFKA_LOCAL_SECURE", raising=False)
    stack.broker(home).prepare()                      # a start without the flag
    monkeypatch.setenv("KAFKA_LOCAL_SECURE", "true")
    problem = stack.secure_broker_ready(stack.broker(home))
    if formatted == "scram":
        assert problem is None, problem
    else:
        assert problem is not None and "formatted without SCRAM users" in problem
