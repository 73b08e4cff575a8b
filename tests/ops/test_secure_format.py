"""Formatting a secured broker's storage keeps the SCRAM passwords off the command line.

``kafka-storage format --add-scram=...`` carries every user's password (the super user's
too); a command line is readable by every local user (``ps``, ``/proc/<pid>/cmdline``), so
the main class and its arguments go to an argument file only the owner can read, in the
broker's 0700 ``secure/`` directory, which ``java @file`` expands, and which is removed once
the format is over, whether it succeeded or not.
"""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from ops import kafka_local
from ops.kafka_secure import ADMIN, BrokerSecurity


def _passwords(home: Path) -> dict[str, str]:
    stored = json.loads((home / "secure" / "users.json").read_text())
    return {name: pw for name, pw in stored.items() if not name.startswith("__")}


def _secured(tmp_path: Path) -> kafka_local.LocalBroker:
    home = tmp_path / "broker"
    return kafka_local.LocalBroker(home, port=19092, controller_port=19093,
                                   security=BrokerSecurity.for_broker_home(home))


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Every command prepare() runs, with the argument files it names as they were then."""
    seen: list[dict[str, Any]] = []

    def run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        files = {}
        for arg in cmd:
            if arg.startswith("@"):
                path = Path(arg[1:])
                files[path] = (path.read_text(), stat.S_IMODE(path.stat().st_mode))
        seen.append({"cmd": list(cmd), "files": files})
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(kafka_local, "ensure_jars", lambda *a, **k: Path("/nowhere"))
    monkeypatch.setattr(kafka_local.subprocess, "run", run)
    return seen


def test_no_scram_password_is_on_the_command_line(tmp_path: Path,
                                                  captured: list[dict[str, Any]]) -> None:
    broker = _secured(tmp_path)
    broker.prepare()
    passwords = _passwords(broker.home)
    assert ADMIN in passwords and len(passwords) == 5
    (call,) = captured
    for arg in call["cmd"]:
        for name, password in passwords.items():
            assert password not in arg, f"{name}'s password is on the command line"
    # what the tool is told: in an argument file, 0600, in the 0700 secure/ directory
    argfiles = [a for a in call["cmd"] if a.startswith("@")]
    assert len(argfiles) == 1 and call["cmd"][-1] == argfiles[0]
    argfile = Path(argfiles[0][1:])
    assert argfile.parent == broker.home / "secure"
    assert stat.S_IMODE(argfile.parent.stat().st_mode) == 0o700
    text, mode = call["files"][argfile]
    assert mode == 0o600
    assert text.splitlines()[:2] == ['"kafka.tools.StorageTool"', '"format"']
    for name, password in passwords.items():
        assert f'"--add-scram=SCRAM-SHA-512=[name={name},password={password}]"' in text
    assert "kafka.tools.StorageTool" not in call["cmd"]
    assert not argfile.exists(), "the argument file outlived the format"


def test_the_argument_file_is_removed_when_the_format_fails(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    broker = _secured(tmp_path)
    named: list[Path] = []

    def run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        named.extend(Path(a[1:]) for a in cmd if a.startswith("@"))
        return subprocess.CompletedProcess(cmd, 1, "", "bad config")

    monkeypatch.setattr(kafka_local, "ensure_jars", lambda *a, **k: Path("/nowhere"))
    monkeypatch.setattr(kafka_local.subprocess, "run", run)
    with pytest.raises(kafka_local.BrokerError, match="bad config"):
        broker.prepare()
    assert len(named) == 1 and not named[0].exists()
    assert list((broker.home / "secure").glob("*.args")) == []


@pytest.mark.parametrize("arg", ["plain", "-dash", "#hash", "sp ace", 'q"uote', "back\\slash\\",
                                 "new\nline\r", "tab\there", "'single'", "@at", "", "a=[b,c]"])
def test_arguments_are_quoted_for_the_java_launcher(arg: str) -> None:
    """The launcher's rules: inside double quotes, a backslash escapes the next character
    (n, r, t, f: the control character); a line ends an argument."""
    line = kafka_local.argfile_quote(arg)
    assert "\n" not in line and "\r" not in line
    assert line.startswith('"') and line.endswith('"')
    out, i = [], 1
    while i < len(line) - 1:
        ch = line[i]
        if ch == "\\":
            i += 1
            ch = {"n": "\n", "r": "\r", "t": "\t", "f": "\f"}.get(line[i], line[i])
        else:
            assert ch != '"', "an unescaped quote ends the argument early"
        out.append(ch)
        i += 1
    assert "".join(out) == arg


@pytest.mark.broker
def test_the_real_format_creates_the_storage_and_the_scram_users(tmp_path: Path) -> None:
    """Kafka's own StorageTool, started through the argument file, formats the directory
    and records every SCRAM user (the passwords only as salted hashes)."""
    from tests.conftest import _unavailable

    if shutil.which("java") is None:
        _unavailable("java not found on PATH")
    try:
        kafka_local.ensure_jars()
    except kafka_local.BrokerError as exc:
        _unavailable(str(exc))
    broker = _secured(tmp_path)  # state_dir: the project's, where the jars are
    broker.prepare()
    data = broker.home / "data"
    assert "cluster.id=" in (data / "meta.properties").read_text()
    checkpoint = (data / "bootstrap.checkpoint").read_bytes()
    for name, password in _passwords(broker.home).items():
        assert name.encode() in checkpoint
        assert password.encode() not in checkpoint
    assert list((broker.home / "secure").glob("*.args")) == []
