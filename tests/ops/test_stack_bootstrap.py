"""Which Kafka `make up` takes for its own broker, and sandbox mode on a Kafka that is not.

Any loopback bootstrap counted as the local broker whatever its port: with
``KAFKA_BOOTSTRAP_SERVERS=localhost:29092`` (the user's own Kafka) `make up` started an unused
broker on KAFKA_PORT and, under KAFKA_LOCAL_SECURE, gave the processes its SCRAM credentials
for the other Kafka. And sandbox mode (no SF_CLIENT_ID) on a production cluster was taken
silently: the sandbox connector fenced the real one (the same transactional id), the worker
joined the real group and failed its Orders, the sink took the real outcomes.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from common.errors import ConfigError
from ops import stack
from tests.ops.test_make_up_variables import scratch_stack

VARIABLES = ("KAFKA_BOOTSTRAP_SERVERS", "KAFKA_PORT", "KAFKA_LOCAL_SECURE", "SF_CLIENT_ID",
             "SFPROV_SANDBOX_REMOTE_KAFKA", "SFPROV_LOG_MAX_MB")


@pytest.fixture(autouse=True)
def scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A scratch state directory, no .env, none of the variables set; nothing may start."""
    scratch_stack(tmp_path, monkeypatch, VARIABLES)
    monkeypatch.setattr(stack.subprocess, "run",
                        lambda *a, **kw: pytest.fail(f"{a[0]} was run"))
    monkeypatch.setattr(stack.subprocess, "Popen",
                        lambda *a, **kw: pytest.fail(f"{a[0]} was started"))


@pytest.mark.parametrize("servers,port,local", [
    ("", None, True),                                   # unset: the local broker
    ("  ", "19092", True),
    ("127.0.0.1:9092", None, True),
    ("localhost:9092, 127.0.0.1:9092", None, True),
    ("localhost", None, True),                          # the clients' default port
    ("localhost:19092", "19092", True),
    ("localhost:29092", None, False),                   # the user's own Kafka
    ("127.0.0.1:9092", "19092", False),
    ("localhost:9092,kafka:9092", None, False),
    ("kafka.prod.example.com:9096", None, False),
])
def test_only_the_loopback_on_kafka_port_is_the_local_broker(servers, port, local):
    env = {"KAFKA_BOOTSTRAP_SERVERS": servers, **({"KAFKA_PORT": port} if port else {})}
    assert stack.uses_local_broker(env) is local
    assert stack.secure({**env, "KAFKA_LOCAL_SECURE": "true"}) is local


def test_another_local_kafka_gets_no_broker_and_no_local_credentials(monkeypatch, tmp_path):
    """Real credentials, the user's own Kafka on 29092 with KAFKA_LOCAL_SECURE left on."""
    monkeypatch.setenv("SF_CLIENT_ID", "a-real-client")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "localhost:29092")
    monkeypatch.setenv("KAFKA_LOCAL_SECURE", "true")
    assert stack.broker(tmp_path / "broker").security is None
    processes = stack.plan(stack.environment())
    assert processes and all("KAFKA_SASL_USERNAME" not in p["env"] for p in processes)
    assert {p["env"]["KAFKA_BOOTSTRAP_SERVERS"] for p in processes} == {"localhost:29092"}


@pytest.mark.parametrize("servers", ["kafka.prod.example.com:9096", "localhost:29092"])
def test_sandbox_mode_refuses_a_kafka_that_is_not_the_local_broker(servers, monkeypatch,
                                                                   capsys):
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", servers)
    assert stack.main(["up"]) == 64
    err = capsys.readouterr().err
    assert err.startswith(f"error: KAFKA_BOOTSTRAP_SERVERS: {servers} is not the local broker "
                          "(127.0.0.1:9092) and SF_CLIENT_ID is unset (sandbox mode)")
    assert "SFPROV_SANDBOX_REMOTE_KAFKA=true" in err and err.count("\n") == 1
    assert not stack.PLAN.exists() and not stack.STATE.exists()   # nothing was started


def test_sandbox_mode_takes_another_kafka_only_when_asked(monkeypatch):
    remote = {"KAFKA_BOOTSTRAP_SERVERS": "kafka.test.example.com:9092"}
    stack.check_sandbox_kafka({**remote, "SFPROV_SANDBOX_REMOTE_KAFKA": "true"})
    stack.check_sandbox_kafka({**remote, "SF_CLIENT_ID": "a-real-client"})   # not sandbox mode
    stack.check_sandbox_kafka({})                                           # the local broker
    with pytest.raises(ConfigError, match="^SFPROV_SANDBOX_REMOTE_KAFKA:"):
        stack.check_sandbox_kafka({**remote, "SFPROV_SANDBOX_REMOTE_KAFKA": "please"})
    with pytest.raises(ConfigError, match="^KAFKA_BOOTSTRAP_SERVERS:"):
        stack.check_sandbox_kafka({**remote, "SFPROV_SANDBOX_REMOTE_KAFKA": "false"})
