"""The local broker's pid file and start, and the cluster's, guard what they signal.

The broker's pid file held the pid alone: after the broker died (or the machine restarted)
the pid could belong to another user's process, os.kill(pid, 0) answered EPERM, and
`running_pid` took that for the broker — `make status` said running, `make up` waited 90 s
and blamed the broker, `make down` raised PermissionError and left the pid file. A broker
running on 9092 with KAFKA_PORT=19092 asked was waited for on 19092 for 90 s. A cluster
start that failed stopped every node, also those that ran before it. Nothing here starts a
process: os.kill, os.killpg and the nodes' start/stop are stubbed.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ops import kafka_local
from ops.kafka_cluster import ClusterNode, LocalCluster
from ops.kafka_local import BrokerError, LocalBroker
from ops.supervisor import process_start


@pytest.fixture
def signals(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[tuple[int, int]]]:
    """os.kill answers EPERM for this test's own pid (as for another user's process);
    os.killpg only records (nothing is signalled)."""
    sent: dict[str, list[tuple[int, int]]] = {"kill": [], "killpg": []}
    real_kill = os.kill

    def kill(pid: int, sig: int) -> None:
        sent["kill"].append((pid, sig))
        if pid == os.getpid():
            raise PermissionError(1, "Operation not permitted")
        real_kill(pid, sig)

    monkeypatch.setattr(os, "kill", kill)
    monkeypatch.setattr(os, "killpg", lambda pid, sig: sent["killpg"].append((pid, sig)))
    return sent


def broker(tmp_path: Path, port: int = 9092) -> LocalBroker:
    home = tmp_path / "broker"
    home.mkdir(parents=True, exist_ok=True)
    return LocalBroker(home, port=port, controller_port=port + 1, state_dir=tmp_path)


def test_a_pid_of_another_users_process_is_not_the_broker(tmp_path, signals):
    """A pid file of an earlier release (the pid alone) whose pid answers EPERM."""
    b = broker(tmp_path)
    b.pid_file.write_text(str(os.getpid()))
    assert b.running_pid() is None
    assert b.stop(grace=0.1) is False                   # no PermissionError, nothing signalled
    assert signals["killpg"] == []
    assert not b.pid_file.exists()
    assert kafka_local._alive(os.getpid()) is False     # EPERM: not ours (any more)


def test_the_pid_file_records_the_brokers_start(tmp_path, signals):
    """``PID START``: a pid whose process started at another time is not the broker."""
    b = broker(tmp_path)
    b.pid_file.write_text(f"{os.getpid()} 0b0e-old-boot:4242")
    assert b.running_pid() is None
    b.pid_file.write_text(f"{os.getpid()} {process_start(os.getpid())}")
    assert b.running_pid() == os.getpid()               # verified by its start, not by os.kill


def test_start_writes_the_pid_with_its_start(tmp_path, monkeypatch):
    class Proc:
        pid = os.getpid()

    b = broker(tmp_path, kafka_local.free_port())
    b.controller_port = kafka_local.free_port()
    monkeypatch.setattr(LocalBroker, "prepare", lambda self: self.home / "server.properties")
    monkeypatch.setattr(kafka_local.subprocess, "Popen", lambda *a, **k: Proc())
    monkeypatch.setattr(LocalBroker, "wait_ready", lambda self, **kw: None)
    (b.home / "logs").mkdir()
    b.start()
    assert b.pid_file.read_text().split() == [str(os.getpid()), process_start(os.getpid())]


def test_a_broker_running_on_another_port_is_an_error_at_once(tmp_path, monkeypatch):
    b = broker(tmp_path, 19092)
    (b.home / "server.properties").write_text(
        "node.id=1\nlisteners=PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093\n")
    monkeypatch.setattr(LocalBroker, "running_pid", lambda self: 4242)
    monkeypatch.setattr(LocalBroker, "wait_ready", lambda self, **kw: pytest.fail(
        "waited for a broker on 19092"))
    with pytest.raises(BrokerError, match=r"^the broker runs on 9092 \(KAFKA_PORT=19092 "
                                          r"asked\): make down first$"):
        b.start()
    b.port = 9092                                        # the port it runs on: found running
    monkeypatch.setattr(LocalBroker, "wait_ready", lambda self, **kw: None)
    assert b.start() is b


def test_a_failed_cluster_start_stops_only_the_nodes_it_started(tmp_path, monkeypatch):
    cluster = LocalCluster(tmp_path / "cluster", nodes=3, ports=[1, 3, 5],
                           controller_ports=[2, 4, 6])
    stopped: list[int] = []

    def start(self: ClusterNode, **kw: object) -> ClusterNode:
        if self.node_id == 3:
            raise BrokerError("node 3 exited with 1")
        return self

    monkeypatch.setattr(ClusterNode, "running_pid",
                        lambda self: None if self.node_id == 3 else 100 + self.node_id)
    monkeypatch.setattr(ClusterNode, "start", start)
    monkeypatch.setattr(ClusterNode, "stop",
                        lambda self, grace=30.0: stopped.append(self.node_id) or True)
    with pytest.raises(BrokerError, match="node 3"):
        cluster.start(timeout=1)
    assert stopped == [3]                                # nodes 1 and 2 ran before: left alone


def test_a_health_host_that_does_not_resolve_is_not_a_busy_port():
    """`*_HTTP_HOST` set to a name this machine cannot resolve: `make up`'s port check ended
    in a gaierror traceback (after the broker had started); the process reports it itself."""
    from ops.stack import busy_port

    assert busy_port([{"name": "worker", "argv": ["python"],
                       "health_url": "http://sfprov-worker.invalid:9102/healthz"}]) is None
