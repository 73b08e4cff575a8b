"""Probes, the in-flight tracker and the lag gauges, without a broker."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
import types
import urllib.error
import urllib.request

import pytest

from common.inflight import InFlight
from common.lagmetrics import CONSUMER_LAG, LAG_READ_AT, LagPublisher
from common.metrics import HealthServer
from common.probes import Heartbeat, connector_liveness, failing_for, readiness
from sinks.observability import SinkOps


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 - local
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_livez_and_readyz_answer_apart_and_healthz_is_readyz():
    state = {"whmcs": False}

    def ready():
        return readiness([("broker", True, ""),
                          ("whmcs", state["whmcs"], "WHMCS refuses this installation's "
                                                    "credentials: Authentication Failed")],
                         {"batches": 3})

    server = HealthServer(0, ready, live=lambda: (True, {"loop_silent_s": 0.1})).start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        status, body = get(f"{base}/livez")
        assert status == 200 and body["live"] is True
        for path in ("/readyz", "/healthz"):
            status, body = get(base + path)
            assert status == 503, path
            assert body["ready"] is False and body["healthy"] is False
            assert body["reasons"] == ["whmcs: WHMCS refuses this installation's credentials: "
                                       "Authentication Failed"]
            assert body["checks"] == {"broker": True, "whmcs": False} and body["batches"] == 3
        state["whmcs"] = True
        assert get(f"{base}/readyz") == get(f"{base}/healthz")
        assert get(f"{base}/readyz")[0] == 200
        with urllib.request.urlopen(f"{base}/metrics", timeout=5) as resp:  # noqa: S310
            assert b"sfprov_gc_pause_seconds" in resp.read()
    finally:
        server.stop()


def _ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback on this machine")
@pytest.mark.parametrize("host", ["::1", "[::1]", "::"])
def test_the_probes_listen_on_an_ipv6_host(host):
    """``CONNECTOR_HTTP_HOST=::1`` (or ``::``) crashed the process at start (socket.gaierror
    from an IPv4-only server), though ``make up`` asks such a host in brackets."""
    server = HealthServer(0, lambda: (True, {}), host=host).start()
    try:
        assert get(f"http://[::1]:{server.port}/healthz")[0] == 200
        if host == "::":  # every address, IPv4 too
            assert get(f"http://127.0.0.1:{server.port}/healthz")[0] == 200
    finally:
        server.stop()


def test_failing_check_is_a_503_with_the_reason():
    def broken():
        raise RuntimeError("boom")
    server = HealthServer(0, broken).start()
    try:
        status, body = get(f"http://127.0.0.1:{server.port}/readyz")
        assert status == 503 and "boom" in body["reasons"][0]
    finally:
        server.stop()


def test_failing_for_needs_the_grace():
    assert not failing_for(None)
    assert not failing_for(100.0, 60, now=150.0)
    assert failing_for(100.0, 60, now=160.0)


def test_heartbeat_goes_stale_when_the_loop_stops_beating():
    clock = Clock()
    hb = Heartbeat(max_silence_s=60, clock=clock)
    assert hb.check()[0]
    clock.now += 61
    ok, details = hb.check()
    assert not ok and details["loop_silent_s"] == 61
    hb.beat()
    assert hb.check()[0]


class CountingHeartbeat(Heartbeat):
    def __init__(self) -> None:
        super().__init__()
        self.beats = 0

    def beat(self) -> None:
        self.beats += 1
        super().beat()


def test_heartbeat_installed_on_a_loop_beats_while_it_runs():
    hb = CountingHeartbeat()
    hb.last_beat = 0.0
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        hb.install_on(loop, interval_s=0.05)
        deadline = time.monotonic() + 10
        while hb.beats < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert hb.beats >= 3, f"{hb.beats} beat(s) in 10 s at a 0.05 s interval"
        assert hb.check()[0]
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def test_connector_liveness_follows_its_own_watchdog():
    assert connector_liveness("subscribed", 10, 0, 300)[0]
    assert not connector_liveness("subscribed", 400, 0, 300)[0]  # past stall + margin: wedged
    assert connector_liveness("limited", 0, -250, 300)[0]  # waiting out a long limit: alive
    assert not connector_liveness("backoff", 0, 120, 300)[0]
    assert not connector_liveness("fenced", 0, 0, 300)[0]
    assert connector_liveness("starting", 0, 0, 300)[0]
    # the Kafka work before a subscription, timed from its start, not from the backoff's end
    assert connector_liveness("resubscribing", 0, 200, 300)[0]
    ok, details = connector_liveness("resubscribing", 0, 301, 300)
    assert not ok and "resubscribing for 301 s" in details["reason"]


def test_livez_answers_reasons_and_checks_as_readyz_does():
    """README: each probe answers ``reasons`` (one "name: why" line per failing check) and
    ``checks``. /livez answered only the liveness callback's details (the connector's a
    singular ``reason``): the worker's, the sink's and the connector's alike now."""
    clock = Clock()
    hb = Heartbeat(max_silence_s=60, clock=clock)             # the worker's
    facts = {"state": "subscribed", "silent": 10.0}

    def connector() -> tuple[bool, dict]:
        return connector_liveness(facts["state"], facts["silent"], 0, 300)

    sink = types.SimpleNamespace(_heartbeat=time.monotonic())
    ops = SinkOps.__new__(SinkOps)                            # its live() reads the sink only
    ops.sink = sink
    servers = {name: HealthServer(0, lambda: readiness([]), live=live).start()
               for name, live in (("worker", hb.check), ("connector", connector),
                                  ("sink", ops.live))}
    try:
        def livez(name: str) -> tuple[int, dict]:
            return get(f"http://127.0.0.1:{servers[name].port}/livez")

        for name in servers:
            status, body = livez(name)
            assert status == 200 and body["live"] is True, (name, body)
            assert body["reasons"] == [] and body["checks"] == {"loop": True}, (name, body)
        assert livez("worker")[1]["loop_silent_s"] == 0 and livez("connector")[1]["state"] == (
            "subscribed")

        clock.now += 61
        facts.update(state="subscribed", silent=400.0)
        sink._heartbeat -= 61
        for name in servers:
            status, body = livez(name)
            assert status == 503 and body["live"] is False, (name, body)
            assert body["checks"] == {"loop": False}, (name, body)
            assert len(body["reasons"]) == 1 and body["reasons"][0].startswith("loop: "), body
        worker = livez("worker")[1]
        assert worker["loop_silent_s"] == 61 and worker["max_silence_s"] == 60
        assert "61 s" in worker["reasons"][0]
        connector_body = livez("connector")[1]
        assert connector_body["reason"] in connector_body["reasons"][0]   # kept for readers
        assert "main loop wedged" in connector_body["reasons"][0]
        assert livez("sink")[1]["loop_silent_s"] >= 61
    finally:
        for server in servers.values():
            server.stop()


def test_inflight_reports_the_oldest_unfinished_event():
    clock = Clock(10_000.0)
    inflight = InFlight(clock)
    assert inflight.oldest_unfinished_age() is None
    inflight.started((0, 1), since=9_990.0)
    inflight.started((1, 7), since=9_995.0)
    inflight.started((2, 3))  # no timestamp: now
    inflight.started((0, 1), since=9_999.0)  # a second start keeps the first
    assert inflight.oldest_unfinished_age() == 10.0
    inflight.finished((0, 1))
    clock.now += 5
    assert inflight.oldest_unfinished_age() == 10.0
    inflight.finished((1, 7))
    inflight.finished((2, 3))
    assert inflight.oldest_unfinished_age() is None and len(inflight) == 0
    inflight.started((3, 3), since=clock.now + 100)  # a clock ahead of ours: counted from now
    assert inflight.oldest_unfinished_age() == 0.0


def test_lag_publisher_publishes_what_the_watchdog_reads_and_keeps_errors():
    rows = [(0, 10, 14), (1, 5, 5)]
    calls = []

    def reader():
        calls.append(1)
        if rows is None:
            raise ConnectionError("broker away")
        return rows

    def read_at() -> float:
        return LAG_READ_AT.labels("g-test-lag")._value.get()

    started = time.time()
    pub = LagPublisher(reader, group="g-test-lag", topic="t-test-lag")
    assert read_at() >= started  # counts from the start: a first read failing pages too
    assert pub.read() == rows
    assert CONSUMER_LAG.labels("g-test-lag", "t-test-lag", "0")._value.get() == 4
    assert CONSUMER_LAG.labels("g-test-lag", "t-test-lag", "1")._value.get() == 0
    LAG_READ_AT.labels("g-test-lag").set(1.0)  # as if read long ago
    rows = None
    with contextlib.suppress(ConnectionError):
        pub.read()
    assert pub.last_error and pub.error_since is not None
    assert read_at() == 1.0  # a failed read is no read: SfprovLagUnreadable sees its age
    rows = [(0, 14, 14)]
    pub.read()
    assert pub.last_error is None and pub.error_since is None
    assert read_at() >= started
    assert CONSUMER_LAG.labels("g-test-lag", "t-test-lag", "0")._value.get() == 0


def test_the_sinks_loop_check_is_the_loop_and_a_dead_letter_failure_is_kafkas():
    """A failed dead-letter producer made /readyz say `loop: poll loop silent` beside the
    kafka check, sending operators after a wedged loop; the loop beat a moment ago."""
    from sinks.pausing import Pauses

    sink = types.SimpleNamespace(
        _heartbeat=time.monotonic(), started=True, pauses=Pauses(lambda *a: None),
        dead_letters=types.SimpleNamespace(failure="KafkaException: _FATAL"),
        health=lambda: (False, {}))
    ops = SinkOps.__new__(SinkOps)
    ops.sink = sink
    ops.lag = types.SimpleNamespace(error_since=None, last_error=None)
    ready, body = ops.ready()
    assert not ready
    assert body["checks"]["loop"] is True and body["checks"]["kafka"] is False, body
    sink._heartbeat -= 61
    _ready, body = ops.ready()
    assert body["checks"]["loop"] is False
    assert any(r.startswith("loop: poll loop silent for 6") for r in body["reasons"]), body
