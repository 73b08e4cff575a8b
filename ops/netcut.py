"""Cut one process off from the brokers while everything else stays reachable.

A network partition between a worker and the Kafka cluster is a different fault from a
pause: the worker keeps running — its timers fire, its WHMCS calls and Salesforce reads go
through — while its heartbeats, fetches and produce requests vanish. This box has no
firewall to drop packets with, so the cut is made one level up: the process reaches every
broker node through its own TCP forwarders, and the brokers advertise those forwarders to
it (a listener per process, ``ops.kafka_local.LocalBroker.extra_listeners``: a Kafka client
connects to whatever addresses the metadata of the listener it bootstrapped from names).

``cut()`` freezes a route as a partition does: no byte moves either way on its open
connections, nothing is closed (no RST, no FIN reaches the other side: a peer that closes
meanwhile is noticed only after the heal), and a connection opened during the cut is taken
but gets no answer until the heal. The clients see what a silent network gives them —
requests that time out — and the kernel's flow control fills their socket buffers.
``heal()`` lets the held bytes through in order, as TCP's retransmissions would.

The forwarders run on their own event loop in a daemon thread; every public method is
called from other threads. :class:`CutRoutes` is what a pipeline of processes uses: a route
per process to every node of a cluster, the listeners the nodes need for it, and timed cuts.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("sfprov.netcut")

# A side's reading pauses while the other side's write buffer holds this much (and resumes
# below a quarter of it): the forwarder never buffers more than the kernel would.
HIGH_WATER = 256 * 1024


class _Side(asyncio.Protocol):
    """One socket of a forwarded connection; ``peer`` is the other one."""

    def __init__(self, pair: _Pair) -> None:
        self.pair = pair
        self.transport: asyncio.Transport | None = None
        self.peer: _Side | None = None
        self.held: list[bytes] = []  # bytes that arrived before the peer existed
        self.backpressure = False  # the peer's writes are full: our reading is paused

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(high=HIGH_WATER)
        self.pair.sync()

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is None or peer.transport is None:
            self.held.append(data)
            return
        peer.transport.write(data)

    def eof_received(self) -> bool:
        self.pair.close()  # Kafka's clients and brokers never half-close a connection
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.pair.close()

    # the peer's writes: pause our reading while they are full
    def pause_writing(self) -> None:
        if self.peer is not None:
            self.peer.backpressure = True
            self.pair.sync()

    def resume_writing(self) -> None:
        if self.peer is not None:
            self.peer.backpressure = False
            self.pair.sync()


@dataclass(eq=False)
class _Pair:
    route: Route
    client: _Side = field(init=False)
    server: _Side = field(init=False)
    closed: bool = False

    def __post_init__(self) -> None:
        self.client, self.server = _Side(self), _Side(self)
        self.client.peer, self.server.peer = self.server, self.client

    def sync(self) -> None:
        """Reading on each side follows the route's state and the peer's backpressure;
        bytes held while the server side connected go out once it has."""
        for side in (self.client, self.server):
            transport = side.transport
            if transport is None or transport.is_closing():
                continue
            if self.route.is_cut or side.backpressure:
                if transport.is_reading():
                    transport.pause_reading()
                continue
            peer = side.peer
            if side.held and peer is not None and peer.transport is not None:
                for chunk in side.held:
                    peer.transport.write(chunk)
                side.held.clear()
            if not transport.is_reading():
                transport.resume_reading()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.route.pairs.discard(self)
        for side in (self.client, self.server):
            if side.transport is not None and not side.transport.is_closing():
                peer = side.peer
                if side.held and peer is not None and peer.transport is not None:
                    peer.transport.write(b"".join(side.held))
                side.transport.close()  # after what is buffered is written


@dataclass(eq=False)
class Route:
    """Forwarders of one name (a process): listen port → target address each."""

    name: str
    is_cut: bool = False
    pairs: set[_Pair] = field(default_factory=set)
    servers: list[asyncio.AbstractServer] = field(default_factory=list)
    cuts: int = 0


class NetCut:
    """TCP forwarders grouped by name; ``cut(name)`` / ``heal(name)`` from any thread."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self._routes: dict[str, Route] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="netcut",
                                        daemon=True)
        self._thread.start()

    def _call(self, coro: Any, timeout: float = 10.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def forward(self, name: str, target_port: int, *, listen_port: int = 0,
                target_host: str | None = None) -> int:
        """Listen on ``listen_port`` (0: any free one) and forward each connection to the
        target, as part of the route ``name``; returns the port listened on."""
        return int(self._call(self._forward(name, target_host or self.host, target_port,
                                            listen_port)))

    async def _forward(self, name: str, target_host: str, target_port: int,
                       listen_port: int) -> int:
        route = self._routes.setdefault(name, Route(name))
        loop = asyncio.get_running_loop()

        def accepted() -> _Side:
            pair = _Pair(route)
            route.pairs.add(pair)
            loop.create_task(self._connect(pair, target_host, target_port))
            return pair.client

        server = await loop.create_server(accepted, self.host, listen_port, reuse_address=True)
        route.servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    async def _connect(self, pair: _Pair, host: str, port: int) -> None:
        while pair.route.is_cut and not pair.closed:  # held: no answer until the heal
            await asyncio.sleep(0.05)
        if pair.closed:
            return
        try:
            await asyncio.get_running_loop().create_connection(lambda: pair.server, host, port)
        except OSError:
            pair.close()  # the target refused: so does the forwarder (a broker down)

    def cut(self, name: str) -> None:
        self._call(self._set(name, True))

    def heal(self, name: str) -> None:
        self._call(self._set(name, False))

    async def _set(self, name: str, cut: bool) -> None:
        route = self._routes[name]
        if cut and not route.is_cut:
            route.cuts += 1
        route.is_cut = cut
        for pair in list(route.pairs):
            pair.sync()
        log.info("%s %s from the brokers (%d connection(s))", name,
                 "cut off" if cut else "reconnected", len(route.pairs))

    def is_cut(self, name: str) -> bool:
        return self._routes[name].is_cut

    def names(self) -> list[str]:
        return list(self._routes)

    def connections(self, name: str) -> int:
        return len(self._routes[name].pairs)

    def close(self, names: Iterable[str] | None = None) -> None:
        """Stop listening and close every forwarded connection (all routes by default)."""
        async def shut() -> None:
            for name in list(names if names is not None else self._routes):
                route = self._routes.pop(name, None)
                if route is None:
                    continue
                for server in route.servers:
                    server.close()
                route.is_cut = False
                for pair in list(route.pairs):
                    pair.close()
        if self._loop.is_running():
            self._call(shut())
        if names is None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)

    def __enter__(self) -> NetCut:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class CutRoutes:
    """Per-process routes to every node of a local broker or cluster, cut one at a time.

    Each named process gets, on every node, a listener of its own (:meth:`listeners`, for
    ``LocalBroker``/``LocalCluster(extra_listeners=)``) that advertises a forwarder of
    :class:`NetCut`; the process bootstraps from its forwarders (:meth:`bootstrap`), so a
    Kafka client in it only ever connects through them. ``free_port`` picks the ports."""

    def __init__(self, names: Iterable[str], nodes: int, free_port: Callable[[], int],
                 host: str = "127.0.0.1") -> None:
        self.host = host
        # per process: each node's (listened by the broker, advertised = forwarder) port
        self.ports = {name: [(free_port(), free_port()) for _ in range(nodes)]
                      for name in names}
        self.netcut: NetCut | None = None
        self._timers: dict[str, threading.Timer] = {}
        self.log: list[tuple[float, str, float | None]] = []  # (when, who, for how long)

    def __contains__(self, name: object) -> bool:
        return name in self.ports

    @staticmethod
    def listener(name: str) -> str:
        """The broker listener of a process: ``worker2`` → ``CUT_WORKER2``."""
        return "CUT_" + "".join(c for c in name.upper() if c.isalnum())

    def listeners(self, node: int) -> dict[str, tuple[int, int]]:
        """The extra listeners of node ``node`` (0-based): listener name → ports."""
        return {self.listener(name): ports[node] for name, ports in self.ports.items()}

    def start(self) -> None:
        """Open the forwarders (before the processes start; the brokers may come later)."""
        if not self.ports or self.netcut is not None:
            return
        self.netcut = NetCut(self.host)
        for name, ports in self.ports.items():
            for listened, advertised in ports:
                self.netcut.forward(name, listened, listen_port=advertised)

    def bootstrap(self, name: str) -> str:
        return ",".join(f"{self.host}:{advertised}" for _listened, advertised in
                        self.ports[name])

    def cut(self, name: str, seconds: float | None = None) -> None:
        """Cut ``name`` off from every node, and reconnect it after ``seconds`` (None: at
        :meth:`heal`). Returns at once."""
        if self.netcut is None or name not in self.ports:
            raise RuntimeError(f"cannot cut {name}: not started with a route of its own")
        self.netcut.cut(name)
        self.log.append((time.time(), name, seconds))
        old = self._timers.pop(name, None)
        if old is not None:
            old.cancel()
        if seconds is not None:
            timer = threading.Timer(seconds, self.heal, (name,))
            timer.daemon = True
            self._timers[name] = timer
            timer.start()

    def heal(self, name: str) -> None:
        """Reconnect a cut-off ``name`` (nothing if it is not cut off)."""
        if self.netcut is not None and name in self.ports:
            self.netcut.heal(name)

    def cut_off(self) -> list[str]:
        if self.netcut is None:
            return []
        return [name for name in self.ports if self.netcut.is_cut(name)]

    def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        if self.netcut is not None:
            self.netcut.close()
