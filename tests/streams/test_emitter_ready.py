"""/readyz while the brokers do not acknowledge the worker's outcomes (observability review,
then its regression review).

An outcome send is retried until the broker takes it, and its event waits in flight
meanwhile — which the stall watchdog counts as progress. With an outcomes partition under
``min.insync.replicas`` (or its leader offline, or the topic deleted) and everything else
well, nothing finished for that partition's Orders, ``SfprovWorkerStalled`` pointed at
``/readyz`` for why, and ``/readyz`` answered 200 with no reason. Judged by the age of the
oldest unacknowledged send: aiokafka's idempotent producer retries such a send for ever
without failing it, and the other partitions' sends go on being acknowledged meanwhile."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from aiokafka.errors import KafkaTimeoutError

import common.backoff
from tests.foundation.test_ready_after_start import worker as built_worker

STUCK = b"801STUCK"


class PartlyStuckWriter:
    """Sends of the key ``STUCK`` hang (``hang``: never answered, as the idempotent producer
    retrying; else fail with ``NotEnoughReplicas`` each time) until ``release``; the others
    are acknowledged."""

    def __init__(self, hang: bool) -> None:
        self.hang, self.released, self.acked = hang, asyncio.Event(), 0

    async def send_soon(self, topic: str, partition: Any, key: bytes, value: bytes,
                        headers: Any) -> None:
        if key == STUCK and not self.released.is_set():
            if self.hang:
                await self.released.wait()
            else:
                raise KafkaTimeoutError("NotEnoughReplicasException")
        self.acked += 1


@pytest.mark.parametrize("hang", [True, False], ids=["never-answered", "failing"])
def test_one_partitions_outcomes_unacknowledged_past_the_grace_make_the_worker_not_ready(
        hang: bool, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = common.backoff.Backoff
    monkeypatch.setattr(common.backoff, "Backoff",
                        lambda *_a, **_kw: real(0.001, 0.001, jitter=False))
    built = built_worker(tmp_path)
    built.ops.start_up.done = True
    built.ops.heartbeat.beat()
    emitter = built.emitter
    grace = built.settings.ready_grace_s
    clock = [time.time()]
    emitter.clock = lambda: clock[0]

    async def encode(_outcome: dict[str, Any]) -> bytes:
        return b"outcome"
    emitter._encode = encode  # type: ignore[method-assign]
    seen: list[tuple[bool, list[str]]] = []

    async def go() -> None:
        writer = PartlyStuckWriter(hang)
        emitter.writer = writer
        clock[0] = time.time() - grace - 1  # the stuck send started past the grace
        stuck = asyncio.ensure_future(emitter.send_outcome({"order_id": STUCK.decode()}))
        await asyncio.sleep(0.05)
        clock[0] = time.time()
        for n in range(20):  # the other partitions' outcomes go on being acknowledged
            await emitter.send_outcome({"order_id": f"801OK{n}"})
        assert writer.acked == 20
        ok, details = built.ops.ready()
        seen.append((ok, details["reasons"]))
        writer.released.set()  # the partition is back: the stuck send is acknowledged
        await asyncio.wait_for(stuck, 5)
        ok, details = built.ops.ready()
        seen.append((ok, details["reasons"]))
        assert emitter.unacked == {}
    asyncio.run(go())
    [(stuck_ok, reasons), (after, _)] = seen
    assert stuck_ok is False and after is True
    want = ("no answer from the brokers" if hang else "KafkaTimeoutError: NotEnoughReplicas")
    assert any(r.startswith(f"kafka_write: writes to Kafka not acknowledged: "
                            f"{emitter.outcomes}: {want}") for r in reasons), reasons


def test_a_send_within_the_grace_is_not_a_reason(tmp_path) -> None:
    built = built_worker(tmp_path)
    built.ops.start_up.done = True
    built.ops.heartbeat.beat()
    built.emitter.unacked[object()] = (time.time() - 1.0, built.emitter.outcomes, "")
    assert built.ops.ready()[0] is True


def test_a_cancelled_send_is_not_waiting_any_more(tmp_path) -> None:
    """A revoke or a stop cancels a send: it must not keep the worker not ready."""
    built = built_worker(tmp_path)
    emitter = built.emitter
    emitter.writer = PartlyStuckWriter(hang=True)

    async def encode(_outcome: dict[str, Any]) -> bytes:
        return b"outcome"
    emitter._encode = encode  # type: ignore[method-assign]

    async def go() -> None:
        send = asyncio.ensure_future(emitter.send_outcome({"order_id": STUCK.decode()}))
        await asyncio.sleep(0.05)
        assert len(emitter.unacked) == 1
        send.cancel()
        with pytest.raises(asyncio.CancelledError):
            await send
    asyncio.run(go())
    assert emitter.unacked == {} and emitter.failing_since() == (None, "")


def test_a_stuck_send_is_named_by_its_own_error_not_an_older_sends(tmp_path,
                                                                   monkeypatch) -> None:
    """Regression review: the error was the topic's last one, kept while other sends kept
    the topic busy — a send stuck without any error (a partition under min ISR) was blamed
    on a leader move of an hour before."""
    real = common.backoff.Backoff
    monkeypatch.setattr(common.backoff, "Backoff",
                        lambda *_a, **_kw: real(0.001, 0.001, jitter=False))
    emitter = built_worker(tmp_path).emitter

    async def encode(_outcome: dict[str, Any]) -> bytes:
        return b"outcome"
    emitter._encode = encode  # type: ignore[method-assign]

    class Writer:
        def __init__(self) -> None:
            self.blip, self.release = 1, asyncio.Event()

        async def send_soon(self, topic: str, partition: Any, key: bytes, value: bytes,
                            headers: Any) -> None:
            if key == b"801BLIP" and self.blip:
                self.blip -= 1
                raise KafkaTimeoutError("NotLeaderForPartitionError: leader moved")
            if key == STUCK:
                await self.release.wait()

    async def go() -> str:
        writer = Writer()
        emitter.writer = writer
        stuck = asyncio.ensure_future(emitter.send_outcome({"order_id": STUCK.decode()}))
        await asyncio.sleep(0.01)
        await emitter.send_outcome({"order_id": "801BLIP"})  # failed once, then acknowledged
        reason = emitter.failing_since()[1]
        writer.release.set()
        await stuck
        return reason
    reason = asyncio.run(go())
    assert reason == f"{emitter.outcomes}: no answer from the brokers (the producer is still trying)"
