"""`make up`'s own variables (KAFKA_PORT, KAFKA_CONTROLLER_PORT, KAFKA_LOCAL_SECURE, the
sandboxes' ports and seed sizes): a value that does not parse is one line naming the variable
and exit 64, as for the processes' settings — it was a raw ValueError traceback (int('abc'))
that named nothing, and KAFKA_PORT=99999 was taken. Nothing here starts or stops a process:
the state directory is a scratch one and no broker is asked for."""

from __future__ import annotations

import os
import subprocess
import types
from pathlib import Path
from typing import Any

import pytest

from common.errors import ConfigError
from ops import kafka_local, sandboxes, stack

MAKE_UP_VARIABLES = ("KAFKA_PORT", "KAFKA_CONTROLLER_PORT", "KAFKA_LOCAL_SECURE",
                     "KAFKA_BOOTSTRAP_SERVERS", "SF_SANDBOX_HTTP_PORT", "SF_SANDBOX_GRPC_PORT",
                     "WHMCS_SANDBOX_PORT", "REGISTRY_SANDBOX_PORT", "SF_SANDBOX_ACCOUNTS",
                     "SF_SANDBOX_ORDERS", "SFPROV_LOG_MAX_MB")
MB = 1024 * 1024


def scratch_stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                  variables: tuple[str, ...]) -> None:
    """A scratch state directory (no running stack's records), no .env, none of
    ``variables`` set, and no broker started (also used by test_stack_bootstrap)."""
    monkeypatch.setenv("SFPROV_ENV_FILE", "/dev/null")
    for name in variables:
        monkeypatch.setenv(name, "")  # restored afterwards
        monkeypatch.delenv(name)
    for name in ("STATE", "LOGS", "STATUS", "PLAN", "SUPERVISOR_PID", "CONTROL",
                 "PIPELINE_ENV"):
        monkeypatch.setattr(stack, name, tmp_path / getattr(stack, name).name)
    monkeypatch.setattr(kafka_local.LocalBroker, "start",
                        lambda self, **kw: pytest.fail("a broker was started"))


@pytest.fixture(autouse=True)
def scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scratch_stack(tmp_path, monkeypatch, MAKE_UP_VARIABLES)
    monkeypatch.setattr(kafka_local.LocalBroker, "stop",
                        lambda self, **kw: pytest.fail("a broker was stopped"))


@pytest.mark.parametrize("name,value", [
    ("KAFKA_PORT", "abc"), ("KAFKA_PORT", "99999"), ("KAFKA_PORT", "0"),
    ("KAFKA_CONTROLLER_PORT", "9o93"), ("KAFKA_LOCAL_SECURE", "maybe"),
])
def test_make_up_status_names_the_bad_variable_and_exits_64(name, value, monkeypatch, capsys):
    monkeypatch.setenv(name, value)
    assert stack.main(["status"]) == 64
    err = capsys.readouterr().err
    assert err.startswith(f"error: {name}:") and err.count("\n") == 1
    assert "Traceback" not in err


@pytest.mark.parametrize("value", ["lots", "-5"])
def test_make_up_refuses_a_bad_log_limit_before_it_starts_anything(value, monkeypatch, capsys):
    """The supervisor only warns of a bad SFPROV_LOG_MAX_MB (a log setting does not keep a
    running pipeline down); `make up` says it first, one line, exit 64."""
    monkeypatch.setenv("SFPROV_LOG_MAX_MB", value)
    assert stack.main(["up"]) == 64
    err = capsys.readouterr().err
    assert err.startswith("error: SFPROV_LOG_MAX_MB:") and err.count("\n") == 1


def test_make_up_rotates_the_supervisors_log_over_the_limit():
    log = stack.LOGS / "supervisor.log"
    log.parent.mkdir(parents=True)
    log.write_bytes(b"old line\n" * (2 * MB // 9))  # 2 MB
    with stack.open_supervisor_log(1 * MB) as out:
        out.write(b"the new supervisor\n")
    assert (stack.LOGS / "supervisor.log.1").read_bytes().startswith(b"old line\n")
    first, rest = log.read_text().split("\n", 1)
    assert first.startswith("=== ") and first.endswith(
        " supervisor.log over 1 MB: rotated to supervisor.log.1")
    assert rest == "the new supervisor\n"


def test_make_up_appends_to_the_supervisors_log_under_the_limit():
    log = stack.LOGS / "supervisor.log"
    log.parent.mkdir(parents=True)
    log.write_bytes(b"old line\n")
    with stack.open_supervisor_log(1 * MB) as out:
        out.write(b"the new supervisor\n")
    assert log.read_text() == "old line\nthe new supervisor\n"
    assert not (stack.LOGS / "supervisor.log.1").exists()


def test_make_up_hands_the_supervisor_its_rotated_log(monkeypatch):
    """`up` itself (no broker, no topics, an empty plan, the supervisor not started): the
    file the supervisor is to write to is the fresh one, the old one kept beside it."""
    monkeypatch.setenv("SFPROV_LOG_MAX_MB", "1")
    log = stack.LOGS / "supervisor.log"
    log.parent.mkdir(parents=True)
    log.write_bytes(b"old line\n" * (2 * MB // 9))
    given: list[Any] = []

    def popen(argv: list[str], **kw: Any) -> Any:
        given.append(kw["stdout"])
        return types.SimpleNamespace(pid=os.getpid())  # a process that runs, not signalled
    monkeypatch.setattr(stack, "uses_local_broker", lambda env: False)
    monkeypatch.setattr(stack, "subprocess", types.SimpleNamespace(
        run=lambda *a, **k: subprocess.CompletedProcess(a, 0), Popen=popen,
        STDOUT=subprocess.STDOUT, DEVNULL=subprocess.DEVNULL))
    monkeypatch.setattr(stack, "plan", lambda env: [])
    assert stack.up() == 0
    [out] = given
    out.close()
    assert Path(out.name) == log
    assert (stack.LOGS / "supervisor.log.1").stat().st_size >= 2 * MB - 9
    assert "supervisor.log over 1 MB: rotated to supervisor.log.1" in log.read_text()


@pytest.mark.parametrize("name,value", [("KAFKA_PORT", "abc"),
                                        ("KAFKA_CONTROLLER_PORT", "70000")])
def test_kafka_local_names_the_bad_variable_and_exits_64(name, value, monkeypatch, capsys,
                                                         tmp_path):
    monkeypatch.setenv(name, value)
    assert kafka_local.main(["status", "--dir", str(tmp_path / "broker")]) == 64
    assert capsys.readouterr().err.startswith(f"error: {name}:")


def test_the_local_bootstrap_address_reads_kafka_port_as_the_broker_does():
    with pytest.raises(ConfigError, match="^KAFKA_PORT:"):
        kafka_local.local_bootstrap({"KAFKA_PORT": "abc"})
    assert kafka_local.local_bootstrap({"KAFKA_PORT": " 19092 "}) == "127.0.0.1:19092"
    assert kafka_local.local_bootstrap({"KAFKA_PORT": ""}) == "127.0.0.1:9092"
    # a blank KAFKA_BOOTSTRAP_SERVERS is unset for the processes (their default, the local
    # broker): `make up` starts that broker and hands its address on
    blank = {"KAFKA_BOOTSTRAP_SERVERS": " ", "KAFKA_PORT": "19092"}
    assert kafka_local.local_bootstrap(blank) == "127.0.0.1:19092"
    assert stack.uses_local_broker(blank)


def test_good_and_blank_values_are_read_as_before(monkeypatch, tmp_path):
    monkeypatch.setenv("KAFKA_PORT", " 19092 ")
    monkeypatch.setenv("KAFKA_CONTROLLER_PORT", "")
    monkeypatch.setenv("KAFKA_LOCAL_SECURE", " ")
    broker = stack.broker(tmp_path / "broker")
    assert (broker.port, broker.controller_port, broker.security) == (19092, 9093, None)
    assert stack.secure({"KAFKA_LOCAL_SECURE": "false"}) is False
    assert stack.secure({"KAFKA_LOCAL_SECURE": "TRUE"}) is True
    assert sandboxes.ports() == (8443, 7443, 8881)


@pytest.mark.parametrize("name", ["SF_SANDBOX_HTTP_PORT", "SF_SANDBOX_GRPC_PORT",
                                  "WHMCS_SANDBOX_PORT"])
def test_a_bad_sandbox_port_names_its_variable(name, monkeypatch):
    monkeypatch.setenv(name, "84433")
    with pytest.raises(ConfigError, match=f"^{name}:"):
        sandboxes.ports()


def test_a_bad_registry_port_names_its_variable(monkeypatch, tmp_path):
    monkeypatch.setenv("REGISTRY_SANDBOX_PORT", "80x1")
    with pytest.raises(ConfigError, match="^REGISTRY_SANDBOX_PORT:"):
        sandboxes.registry_process(tmp_path, tmp_path)


@pytest.mark.parametrize("name,value", [("SF_SANDBOX_ORDERS", "1k"),
                                        ("SF_SANDBOX_ACCOUNTS", "-5")])
def test_a_bad_seed_size_names_its_variable(name, value, monkeypatch, tmp_path):
    monkeypatch.setenv(name, value)
    monkeypatch.setattr(sandboxes, "admin", lambda state: pytest.fail("seeded"))
    with pytest.raises(ConfigError, match=f"^{name}:"):
        sandboxes.seed_once(tmp_path)
