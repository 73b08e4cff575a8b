"""`sfprov demo` without the Salesforce sandbox is one line, not a traceback; the waits of
`replay` and `demo` refuse nan, inf and negative amounts. No broker, no sandbox."""

from __future__ import annotations

import argparse
import shutil
import socket
import types
from pathlib import Path
from typing import Any

import certifi
import pytest

import ops.cli as cli
import ops.kafkaview as kafkaview
import ops.stack as stack


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture()
def no_sandbox(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Kafka answers (an empty outcomes topic); nothing listens on the sandbox's port."""
    monkeypatch.setattr(cli, "load_local_stack_env", lambda *_argv: None)  # not this machine's stack
    monkeypatch.setenv("SFPROV_ENV_FILE", "/dev/null")
    monkeypatch.setenv("SF_SANDBOX_HTTP_PORT", str(free_port()))
    monkeypatch.setattr(stack, "STATE", tmp_path)
    monkeypatch.setattr(kafkaview, "consumer",
                        lambda settings, **k: types.SimpleNamespace(close=lambda: None))
    monkeypatch.setattr(kafkaview, "end_offsets", lambda c, topic, timeout=10.0: {0: (0, 0)})
    return tmp_path


@pytest.mark.parametrize("tls_made", [False, True], ids=["no-tls-material", "not-listening"])
def test_demo_without_the_sandbox_is_one_line(no_sandbox, capsys, tls_made):
    """requests' OSError (no CA bundle at .state/sandbox/salesforce/tls/ca.pem) or its
    ConnectionError once ended `sfprov demo` in a traceback."""
    if tls_made:
        tls = no_sandbox / "sandbox" / "salesforce" / "tls"
        tls.mkdir(parents=True)
        shutil.copy(certifi.where(), tls / "ca.pem")
    rc = cli.main(["-b", "127.0.0.1:1", "demo", "--count", "1"])
    out, err = capsys.readouterr()
    assert rc == 1, (out, err)
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: the Salesforce sandbox is not "
                                                   "running at https://127.0.0.1:"), err
    assert "make up" in lines[0]
    assert ("no TLS CA certificate" in lines[0]) != tls_made, lines[0]


def test_demo_when_the_sandbox_refuses_a_call_is_one_line(no_sandbox, monkeypatch, capsys):
    from sandbox.salesforce.admin_client import AdminClient, AdminError

    def refuse(self: Any, *a: Any, **k: Any) -> Any:
        raise AdminError("POST /query: 500 boom\nsecond line")

    monkeypatch.setattr(AdminClient, "call", refuse)
    rc = cli.main(["-b", "127.0.0.1:1", "demo", "--count", "1"])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err
    [line] = err.strip().splitlines()
    assert line.startswith("error: the Salesforce sandbox at https://") and "500 boom" in line


def _parse(*argv: str) -> argparse.Namespace:
    return cli.build_parser().parse_args(list(argv))


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "NaN", "-inf", "infs", "soon", ""])
@pytest.mark.parametrize("command,option", [
    (["replay", "--from-offset", "0:0"], "--wait"),
    (["demo"], "--timeout"),
    (["demo"], "--writeback-wait"),
])
def test_a_wait_must_be_finite_and_not_negative(command, option, value, capsys):
    """`replay --execute --wait nan` waited for the worker group to empty for ever."""
    with pytest.raises(SystemExit) as exited:
        _parse(*command, f"{option}={value}")
    assert exited.value.code == 2
    assert f"argument {option}: " in capsys.readouterr().err


def test_a_wait_from_the_environment_must_be_finite(monkeypatch):
    from common.errors import ConfigError

    monkeypatch.setenv("SFPROV_REPLAY_WAIT_S", "nan")
    with pytest.raises(ConfigError, match="SFPROV_REPLAY_WAIT_S"):
        _parse("replay", "--from-offset", "0:0")


def test_the_waits_that_parse():
    from ops.cmd_replay import seconds_arg

    assert _parse("replay", "--from-offset", "0:0", "--wait", "60").wait == 60.0
    assert _parse("replay", "--from-offset", "0:0", "--wait", "2m").wait == 120.0
    assert _parse("replay", "--from-offset", "0:0").wait == 0.0
    demo = _parse("demo", "--timeout", "90", "--writeback-wait", "0")
    assert (demo.timeout, demo.writeback_wait) == (90.0, 0.0)
    assert seconds_arg(" 1.5 ") == 1.5


@pytest.mark.parametrize("count,broken", [(1, 0), (2, 0), (3, 1), (6, 2), (20, 5)])
def test_demo_approves_a_broken_order_only_beside_twice_as_many_good_ones(count, broken):
    """`demo --count 1` approved only a deliberately broken Order: a newcomer saw Failed
    and no Provisioned (CLI review)."""
    from ops.cmd_orders import demo_selection

    rows = [{"Id": f"G{n}", "Description": None} for n in range(30)] + \
        [{"Id": f"B{n}", "Description": f"seed-broken: kind {n}"} for n in range(5)]
    admin = type("Admin", (), {"query": lambda self, soql: {"records": rows}})()
    chosen = demo_selection(admin, count)
    assert len(chosen) == count
    assert sum(c.startswith("B") for c in chosen) == broken
