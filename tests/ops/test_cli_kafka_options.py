"""`sfprov -b` and `--prefix` take the values the processes take, and a bad one is a usage
error naming the option at once (exit 2) — a bad bootstrap was waited on for ~10 s, then
"cannot reach Kafka at localhost:notaport", exit 1, naming neither option nor variable."""

from __future__ import annotations

import time

import pytest

from ops import cli


@pytest.mark.parametrize(("argv", "named"), [
    (["-b", "localhost:notaport", "topics"], "-b/--bootstrap-server"),
    (["--bootstrap-server", "SASL_SSL://k:9092", "lag"], "-b/--bootstrap-server"),
    (["-b", "k1:9092,", "topics"], "-b/--bootstrap-server"),
    (["--prefix", "a/b", "topics"], "--prefix")])
def test_a_bad_kafka_option_is_a_usage_error_naming_it(argv, named, capsys):
    started = time.monotonic()
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    assert exited.value.code == 2 and time.monotonic() - started < 5
    assert f"argument {named}" in capsys.readouterr().err


def test_a_bad_bootstrap_in_the_environment_names_the_variable(monkeypatch, capsys):
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "localhost:notaport")
    started = time.monotonic()
    assert cli.main(["lag"]) == 1 and time.monotonic() - started < 5
    assert "KAFKA_BOOTSTRAP_SERVERS: invalid value 'localhost:notaport' for " \
        "--bootstrap-server" in capsys.readouterr().err


def test_good_kafka_options_are_taken_as_given():
    args = cli.build_parser().parse_args(["-b", " k1:9092, k2:9093 ", "--prefix", "t.", "lag"])
    settings = cli.kafka_settings(args)
    assert settings.bootstrap_servers == "k1:9092,k2:9093" and settings.topic_prefix == "t."
