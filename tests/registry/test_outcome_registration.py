"""The worker registers the outcome schema on its first outcome: a blocking call to the
registry. On the event loop, a hung registry stalled the loop for its timeout once per send
and retry, in turn (the reviewer measured 40 s in 12 s with 4 sends): the consumer missed its
session timeout and lost its partitions, and ``/livez`` failed. The registration runs in a
thread now, one at a time; once the id is cached an outcome is encoded on the loop."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace

import httpx
import pytest

from common.avro import SchemaRegistry
from common.settings import KafkaSettings
from streams.decide import Event, outcome_record
from streams.emitter import KafkaEmitter

TIMEOUT_S = 1.0  # the registry client's timeout: what one blocking call stalled the loop


class Writer:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    async def send_soon(self, topic, partition, key, value, headers) -> None:
        self.sent.append(value)


def emitter(registry: SchemaRegistry) -> KafkaEmitter:
    kafka = KafkaSettings.load({"SCHEMA_REGISTRY_URL": registry.url})
    made = KafkaEmitter(SimpleNamespace(_sfprov_record_writer=Writer()), kafka)  # type: ignore[arg-type]
    made.serde.registry.close()  # type: ignore[union-attr]
    made.serde.registry = registry
    return made


def outcome(n: int = 1) -> dict:
    event = Event(order_id=f"801{n:015d}", idem_key="k", event_uuid="e",
                  correlation_id=None, requested_at=None)
    return outcome_record(event, "Failed", error_code="WHMCS_ERROR")


@pytest.fixture
def hung_registry() -> Iterator[str]:
    """A registry that takes connections and never answers (hung, overloaded)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                held.append(server.accept()[0])
            except OSError:
                return
    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"
    finally:
        server.close()
        for conn in held:
            conn.close()


def test_a_hung_registry_does_not_stall_the_event_loop(hung_registry):
    sink = emitter(SchemaRegistry(hung_registry, timeout=TIMEOUT_S))

    async def go() -> tuple[float, list[asyncio.Task[None]], list[object]]:
        worst = 0.0

        async def ticker() -> None:
            nonlocal worst
            while True:
                start = time.monotonic()
                await asyncio.sleep(0.05)
                worst = max(worst, time.monotonic() - start - 0.05)
        tick = asyncio.create_task(ticker())
        sends = [asyncio.create_task(sink.send_outcome(outcome(n))) for n in range(4)]
        await asyncio.sleep(2.5 * TIMEOUT_S)
        done = [task for task in sends if task.done()]  # before the cancel: nothing ended
        for task in (*sends, tick):
            task.cancel()
        results = await asyncio.gather(*sends, tick, return_exceptions=True)
        return worst, done, results[:len(sends)]
    worst, done, results = asyncio.run(go())
    assert worst < TIMEOUT_S / 2, f"event loop stalled {worst:.1f}s by the registry"
    # a registry away is retried, not a failed send: every send was still waiting for it
    assert done == [], [task.exception() for task in done]
    assert all(isinstance(r, asyncio.CancelledError) for r in results), results
    assert sink.writer.sent == []  # nothing sent without the schema id


def test_one_registration_then_outcomes_are_encoded_on_the_loop(monkeypatch):
    registered = threading.Event()

    def answer(request: httpx.Request) -> httpx.Response:
        time.sleep(0.2)  # slow: the other sends wait for this one
        registered.set()
        return httpx.Response(200, json={"id": 7})
    registry = SchemaRegistry("http://registry.invalid", timeout=TIMEOUT_S)
    registry._client = httpx.Client(base_url=registry.url, transport=httpx.MockTransport(answer))
    sink = emitter(registry)

    async def go(n: int) -> None:
        await asyncio.gather(*(sink.send_outcome(outcome(i)) for i in range(n)))
    asyncio.run(go(4))
    assert registered.is_set() and registry.requests == 1  # one registration for all four
    assert sink.serde.encodes_offline()

    async def no_thread(*_a, **_k):
        raise AssertionError("a thread hop per outcome")
    monkeypatch.setattr(asyncio, "to_thread", no_thread)
    asyncio.run(go(50))
    assert len(sink.writer.sent) == 54 and {v[:5] for v in sink.writer.sent} == {
        b"\x00\x00\x00\x00\x07"}
