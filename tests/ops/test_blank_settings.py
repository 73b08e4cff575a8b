"""A blank value is not set, for the operator tools and `make` as for the processes
(``common.envparse.read_field``): the state directory, the broker's heap and the CLI's
options read from the environment once took a blank value as given — `make up` put its state
in ``./  /`` while the worker's tables went to ``.state``, the JVM started with no heap
bound, and every `sfprov` command refused a blank ``KAFKA_TOPIC_PREFIX`` the pipeline ran
with."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ops import cli

ROOT = Path(__file__).resolve().parents[2]


def _read(env: dict[str, str]) -> dict[str, str]:
    code = ("import json, ops.stack, ops.kafka_local as k\n"
            "from common.settings import CommonSettings\n"
            "print(json.dumps({'stack': str(ops.stack.STATE), 'local': str(k.DEFAULT_STATE),"
            " 'settings': str(CommonSettings.load().state_dir), 'heap': k.JVM_HEAP}))")
    full = {k: v for k, v in os.environ.items()
            if k not in ("SFPROV_STATE_DIR", "KAFKA_HEAP_OPTS")}
    full.update(SFPROV_ENV_FILE=os.devnull, PYTHONPATH=str(ROOT), **env)
    out = subprocess.run([sys.executable, "-c", code], env=full, capture_output=True,
                         text=True, timeout=60, check=True)
    return json.loads(out.stdout)


@pytest.mark.parametrize("blank", ["", "  "])
def test_a_blank_state_dir_and_heap_are_their_defaults(blank):
    got = _read({"SFPROV_STATE_DIR": blank, "KAFKA_HEAP_OPTS": blank})
    assert got["stack"] == got["local"] == got["settings"] == str(ROOT / ".state")
    assert got["heap"] == "-Xms512m -Xmx1g"


def test_set_values_are_taken_as_they_are(tmp_path):
    got = _read({"SFPROV_STATE_DIR": str(tmp_path / "s"), "KAFKA_HEAP_OPTS": "-Xmx2g"})
    assert got["stack"] == got["local"] == got["settings"] == str(tmp_path / "s")
    assert got["heap"] == "-Xmx2g"


def test_the_cli_takes_a_blank_prefix_and_bootstrap_as_unset(monkeypatch):
    monkeypatch.setattr(cli, "load_local_stack_env", lambda *_argv: None)
    monkeypatch.setenv("SFPROV_ENV_FILE", os.devnull)
    monkeypatch.delenv("KAFKA_PORT", raising=False)
    monkeypatch.setenv("KAFKA_TOPIC_PREFIX", "  ")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "   ")
    monkeypatch.setenv("SFPROV_TAIL_LAST", " ")
    args = cli.build_parser().parse_args(["lag"])
    settings = cli.kafka_settings(args)
    assert settings.topic_prefix == ""
    assert settings.bootstrap_servers == "127.0.0.1:9092"
    assert cli.build_parser().parse_args(["tail", "requests"]).last == 10  # the default
