"""The watchdog that bounds a Salesforce exchange (``common.exchange_watchdog.Watchdog``): a
socket it is shown after its time is up is shut at once, and one that ended in time never
touches its socket again (a kept-alive connection a later exchange uses)."""

from __future__ import annotations

import socket
import time

from common.exchange_watchdog import Watchdog


def test_a_socket_connected_after_the_time_is_up_is_shut_at_once():
    """Connecting, there is no socket to shut yet (the connect timeout bounds that): one
    shown to the watchdog too late fails its handshake or request at once."""
    ours, theirs = socket.socketpair()
    with ours, theirs, Watchdog(0.05) as watchdog:
        time.sleep(0.2)
        watchdog.watch(ours)
        ours.settimeout(1.0)
        assert ours.recv(1) == b""  # shut: no wait for the read timeout
        assert watchdog.fired


def test_a_watchdog_ended_never_touches_its_socket():
    ours, theirs = socket.socketpair()
    with ours, theirs:
        with Watchdog(0.05) as watchdog:
            watchdog.watch(ours)
        time.sleep(0.2)
        theirs.sendall(b"x")
        assert ours.recv(1) == b"x"
        assert not watchdog.fired


class _Transport:
    """What urllib3 hands over for TLS inside TLS (an ``https://`` proxy): its
    ``SSLTransport`` has the descriptor, but no ``family`` or ``type``."""

    def __init__(self, sock: socket.socket) -> None:
        self.socket = sock

    def fileno(self) -> int:
        return self.socket.fileno()


def test_a_tls_transport_over_a_tls_proxy_is_watched_too():
    """Through HTTPS_PROXY=https://… every REST call raised AttributeError ('SSLTransport'
    object has no attribute 'family'): not a SalesforceError, the worker dead-lettered its
    Orders WORKER_ERROR and the sink exited (regression review)."""
    ours, theirs = socket.socketpair()
    with ours, theirs, Watchdog(0.05) as watchdog:
        watchdog.watch(_Transport(ours))
        ours.settimeout(1.0)
        assert ours.recv(1) == b""  # shut when the time was up
        assert watchdog.fired
