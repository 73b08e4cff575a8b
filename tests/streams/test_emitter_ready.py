"""/readyz while the brokers do not acknowledge the worker's outcomes (observability review).

An outcome send is retried until the broker takes it, and its event waits in flight
meanwhile — which the stall watchdog counts as progress. With the outcomes partition's
leader offline (or under ``min.insync.replicas``, or the topic deleted) and everything else
well, nothing finished for as long as that lasted, ``SfprovWorkerStalled`` pointed at
``/readyz`` for why, and ``/readyz`` answered 200 with no reason."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from aiokafka.errors import KafkaTimeoutError

import common.backoff
from tests.foundation.test_ready_after_start import worker as built_worker


class FlakyWriter:
    def __init__(self, fails: int) -> None:
        self.fails, self.sent = fails, 0

    async def send_soon(self, topic: str, partition: Any, key: bytes, value: bytes,
                        headers: Any) -> None:
        if self.fails:
            self.fails -= 1
            raise KafkaTimeoutError("NotEnoughReplicasException")
        self.sent += 1


def test_outcomes_not_acknowledged_past_the_grace_make_the_worker_not_ready(
        tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = common.backoff.Backoff
    monkeypatch.setattr(common.backoff, "Backoff",
                        lambda *_a, **_kw: real(0.001, 0.001, jitter=False))
    built = built_worker(tmp_path)
    built.ops.start_up.done = True
    built.ops.heartbeat.beat()
    emitter = built.emitter
    writer = FlakyWriter(fails=10**9)
    emitter.writer = writer

    async def encode(_outcome: dict[str, Any]) -> bytes:
        return b"outcome"
    emitter._encode = encode  # type: ignore[method-assign]
    readiness: list[tuple[bool, list[str]]] = []

    async def go() -> None:
        send = asyncio.ensure_future(emitter.send_outcome({"order_id": "801A"}))
        for _ in range(200):
            await asyncio.sleep(0.005)
            if writer.fails < 10**9 - 3:
                break
        ok, details = built.ops.ready()
        readiness.append((ok, details["reasons"]))  # within the grace: a retry
        since, error = emitter.failing_since()
        assert since is not None and "NotEnoughReplicas" in error
        topic = emitter.outcomes
        emitter.failing[topic] = (time.time() - built.settings.ready_grace_s - 1,
                                  emitter.failing[topic][1])
        ok, details = built.ops.ready()
        readiness.append((ok, details["reasons"]))
        writer.fails = 0  # the leader is back: the retry is acknowledged
        await asyncio.wait_for(send, 5)
        ok, details = built.ops.ready()
        readiness.append((ok, details["reasons"]))
    asyncio.run(go())
    [(within, _), (past, reasons), (after, _)] = readiness
    assert within is True and after is True and writer.sent == 1
    assert past is False
    assert any(r.startswith(f"kafka_write: writes to Kafka not acknowledged: "
                            f"{emitter.outcomes}: KafkaTimeoutError")
               for r in reasons), reasons
