"""ops.netcut: a route that can be cut as a network partition cuts it, and healed.

On plain sockets first (an echo server behind the forwarder), then a real Kafka client that
reaches the session broker only through the route while another client talks to the same
broker directly."""

from __future__ import annotations

import socket
import threading
import time
import uuid

import pytest

from ops.kafka_local import free_port
from ops.netcut import CutRoutes, NetCut


def _echo_server() -> tuple[int, threading.Event]:
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    def accept() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            threading.Thread(target=serve, args=(conn,), daemon=True).start()
        srv.close()
    threading.Thread(target=accept, daemon=True).start()
    return srv.getsockname()[1], stop


def _recv(conn: socket.socket, n: int, timeout: float) -> bytes:
    conn.settimeout(timeout)
    got = b""
    try:
        while len(got) < n:
            chunk = conn.recv(n - len(got))
            if not chunk:
                break
            got += chunk
    except TimeoutError:
        pass
    return got


def test_cut_routes_give_a_process_one_route_per_node_and_a_timed_cut_heals_itself():
    (node1, stop1), (node2, stop2) = _echo_server(), _echo_server()  # two "brokers"
    ports = iter([node1, free_port(), node2, free_port()])
    routes = CutRoutes(["worker2"], 2, lambda: next(ports))
    try:
        assert routes.listeners(0) == {"CUT_WORKER2": routes.ports["worker2"][0]}
        assert routes.listeners(1)["CUT_WORKER2"][0] == node2
        routes.start()
        addresses = routes.bootstrap("worker2").split(",")
        conns = [socket.create_connection((h, int(p))) for h, p in
                 (a.split(":") for a in addresses)]
        for conn in conns:
            conn.sendall(b"ping")
            assert _recv(conn, 4, 5) == b"ping"
        routes.cut("worker2", 1.0)
        assert routes.cut_off() == ["worker2"]
        for conn in conns:
            conn.sendall(b"held")
            assert _recv(conn, 4, 0.3) == b"", "a byte crossed the cut"
        for conn in conns:  # healed by the timer, the held bytes delivered
            assert _recv(conn, 4, 5) == b"held"
        assert routes.cut_off() == []
        assert [who for _at, who, _s in routes.log] == ["worker2"]
        with pytest.raises(RuntimeError):
            routes.cut("sink")  # no route of its own
        for conn in conns:
            conn.close()
    finally:
        routes.close()
        stop1.set()
        stop2.set()


@pytest.fixture
def echo_route():
    port, stop = _echo_server()
    with NetCut() as netcut:
        yield netcut, netcut.forward("p", port)
    stop.set()


def test_bytes_go_both_ways_until_the_cut_and_the_held_ones_arrive_after_the_heal(echo_route):
    netcut, port = echo_route
    with socket.create_connection(("127.0.0.1", port)) as conn:
        conn.sendall(b"before")
        assert _recv(conn, 6, 5) == b"before"
        netcut.cut("p")
        conn.sendall(b"during")
        assert _recv(conn, 6, 1.0) == b"", "a byte crossed the cut"
        netcut.heal("p")
        assert _recv(conn, 6, 5) == b"during", "the bytes sent during the cut were lost"
        big = bytes(range(256)) * 4096  # 1 MiB: the forwarder's backpressure, not its memory
        sender = threading.Thread(target=conn.sendall, args=(big,))
        sender.start()
        assert _recv(conn, len(big), 20) == big
        sender.join(5)


def test_a_connection_opened_during_the_cut_is_taken_but_answered_only_after_the_heal(
        echo_route):
    netcut, port = echo_route
    netcut.cut("p")
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(b"hello")
        assert _recv(conn, 5, 1.0) == b""
        assert netcut.connections("p") == 1
        netcut.heal("p")
        assert _recv(conn, 5, 5) == b"hello"


def test_a_target_that_refuses_closes_the_forwarded_connection():
    with NetCut() as netcut:
        with socket.socket() as s:  # a port nobody listens on
            s.bind(("127.0.0.1", 0))
            dead = s.getsockname()[1]
        port = netcut.forward("p", dead)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            assert _recv(conn, 1, 5) == b""  # closed, not left hanging
        deadline = time.monotonic() + 5
        while netcut.connections("p") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert netcut.connections("p") == 0


@pytest.mark.broker
def test_a_kafka_client_behind_the_route_is_cut_off_while_others_are_not(
        broker_cut, kafka_bootstrap, unique_name):
    from confluent_kafka import Producer

    from tests.conftest import create_topic

    netcut, bootstrap = broker_cut
    topic = unique_name("cut")
    create_topic(kafka_bootstrap, topic)
    cut_off = Producer({"bootstrap.servers": bootstrap, "message.timeout.ms": 60000})
    direct = Producer({"bootstrap.servers": kafka_bootstrap})
    try:
        advertised = int(bootstrap.rsplit(":", 1)[1])
        assert {b.port for b in cut_off.list_topics(timeout=10).brokers.values()} == \
            {advertised}, "the broker advertised another address: traffic would bypass the cut"
        delivered: list[bytes] = []

        def on_delivery(err, msg):
            if err is None:
                delivered.append(msg.value())
        cut_off.produce(topic, b"before", on_delivery=on_delivery)
        assert cut_off.flush(10) == 0 and delivered == [b"before"]
        netcut.cut("cut")
        mark = uuid.uuid4().hex.encode()
        cut_off.produce(topic, mark, on_delivery=on_delivery)
        assert cut_off.flush(3) == 1, "a record crossed the cut"
        direct.produce(topic, b"direct")
        assert direct.flush(10) == 0, "the cut reached a client outside the route"
        netcut.heal("cut")
        assert cut_off.flush(30) == 0
        assert delivered == [b"before", mark]
    finally:
        netcut.heal("cut")
        cut_off.flush(5)
        direct.flush(5)
        del cut_off, direct  # closed now, not after the route is gone (reconnect noise)
