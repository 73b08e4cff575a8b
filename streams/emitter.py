"""The worker's outcome and dead-letter writes (:class:`KafkaEmitter`).

Each send goes through the app's producer (acks=all, the tables'
:class:`~streams.faust_seam.RecordWriter`) and is awaited; a failed send is tried again
until the broker acknowledges it. A write the broker refuses this principal (an ACL) is not
retried: it is handed to :attr:`KafkaEmitter.on_refused` (:meth:`streams.app.Worker.refuse`,
which stops the worker with exit 64).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import faust

from common.avro import AvroSerde, SerdeError, header_text, registry_for
from common.backoff import retry_forever
from common.connection import Refusal, aiokafka_refusal
from common.deadletter import dead_letter_headers
from common.settings import KafkaSettings
from streams import faust_seam, metrics
from streams.handler import DeadLetter

log = logging.getLogger(__name__)

#: the header `sfprov dlq requeue` puts on each copy it sends back (``TOPIC:PARTITION:OFFSET``
#: of the dead letter); a dead letter of such a copy carries it as ``dlq.requeued_from``
REQUEUED_FROM = "sfprov.requeued_from"


class KafkaEmitter:
    """Outcomes and dead letters through the app's producer (acks=all, the tables'
    :class:`~streams.faust_seam.RecordWriter`), each awaited: a failed send is tried again
    until it succeeds, except one the broker refuses this principal (an ACL), which is
    handed to :attr:`on_refused` (:meth:`Worker.refuse`: the worker stops) and never
    returns — the event stays unfinished, and is redelivered once the ACL is fixed."""

    on_refused: Callable[[str, Refusal], None]  # the refused operation and the refusal

    def __init__(self, app: faust.App, kafka: KafkaSettings) -> None:
        self.on_refused = _log_refusal  # the Worker's: Worker.refuse
        self.writer = faust_seam.RecordWriter.for_app(app)
        self.outcomes, self.dead_letters = kafka.outcomes, kafka.dead_letters
        self.serde = AvroSerde("provisioning_outcome", topic=kafka.outcomes,
                               registry=registry_for(kafka))
        self.headers = dict(self.serde.headers())  # empty in the Confluent format
        # the outcome's trace context (streams.observability; nothing when tracing is off)
        self.outcome_headers: Callable[[dict[str, Any]], dict[str, bytes]] = lambda _o: {}
        self._registering = asyncio.Lock()  # one registration of the outcome schema at a time
        # each send not yet acknowledged → (wall time it started, its topic, its own last
        # error: "" while none). /readyz reports a send unacknowledged past its grace
        # (streams.observability) — its event waits in flight meanwhile, which the stall
        # watchdog counts as progress. By age, not by errors: aiokafka's idempotent producer
        # retries a partition under min ISR or a broker out of reach for ever without
        # failing the send, and one partition's failure must not be cleared by the other
        # partitions' acknowledgements; each send's own error, not its topic's last one (an
        # old blip's, while other sends kept the topic busy).
        self.unacked: dict[object, tuple[float, str, str]] = {}
        self.clock: Callable[[], float] = time.time

    def failing_since(self) -> tuple[float | None, str]:
        """When the oldest send not yet acknowledged started (None: none waits), and its
        topic with its last error. Safe from another thread (the probes')."""
        waiting = list(self.unacked.values())  # one C-level copy: no size change under it
        if not waiting:
            return None, ""
        since, topic, error = min(waiting, key=lambda w: w[0])
        return since, f"{topic}: " + (error or "no answer from the brokers (the producer is "
                                               "still trying)")

    async def send_outcome(self, outcome: dict[str, Any]) -> None:
        try:
            value: bytes | None = await self._encode(outcome)
        except SerdeError as exc:
            if not exc.retryable:  # the record itself: the handler retries, then dead-letters
                raise
            value = None  # the schema registry away: encoded again in the retries

        async def send() -> None:
            await self.writer.send_soon(
                self.outcomes, None, outcome["order_id"].encode(),
                value if value is not None else await self._encode(outcome),
                list({**self.headers, **self.outcome_headers(outcome)}.items()) or None)
        await self._send("outcomes", self.outcomes, send)
        status = outcome.get("status")
        if status != "Provisioned":  # a provisioning logs its own ("WHMCS order created")
            log.log(logging.WARNING if status == "Failed" else logging.INFO,
                    "outcome %s %s: %s", status, outcome.get("error_code") or "",
                    outcome.get("error_message") or "", extra={
                        "order_id": outcome.get("order_id"),
                        "idem_key": outcome.get("idem_key"), "status": status,
                        "error_code": outcome.get("error_code")})

    async def _encode(self, outcome: dict[str, Any]) -> bytes:
        """The outcome's value. Until the schema's id is cached, encoding registers it — a
        blocking call to the registry (up to its timeout, again on every retry while it
        hangs): that runs in a thread, one at a time, so the loop keeps serving the
        consumer's heartbeats. Once the id is cached it is plain CPU work, done here."""
        if self.serde.encodes_offline():
            return self.serde.encode(outcome)
        async with self._registering:
            if self.serde.encodes_offline():  # registered while this send waited
                return self.serde.encode(outcome)
            return await asyncio.to_thread(self.serde.encode, outcome)

    async def send_dead_letter(self, letter: DeadLetter) -> None:
        rec = letter.record
        headers = list(dead_letter_headers(
            stage="worker", reason=letter.reason, error_class=letter.error_class,
            error_code=letter.error_code, source_topic=rec.topic,
            source_partition=rec.partition, source_offset=rec.offset, order_id=letter.order_id,
            event_uuid=letter.event_uuid, idem_key=letter.idem_key,
            # a copy `sfprov dlq requeue` sent: the dead letter it came from, so a later
            # `requeue --all` sends this newer one and passes over that one
            requeued_from=header_text(rec.headers, REQUEUED_FROM)))

        async def send() -> None:
            await self.writer.send_soon(self.dead_letters, None, rec.key, rec.value, headers)
        await self._send("dead letters", self.dead_letters, send)
        log.warning("event dead-lettered (%s): %s", letter.error_code or letter.error_class,
                    letter.reason, extra={
                        "order_id": letter.order_id, "idem_key": letter.idem_key,
                        "event_uuid": letter.event_uuid, "error_code": letter.error_code,
                        "topic": rec.topic, "partition": rec.partition, "offset": rec.offset})

    async def _send(self, kind: str, topic: str, send: Callable[[], Awaitable[None]]) -> None:
        """``send()`` until the broker acknowledges it; a refusal (aiokafka's authorization
        errors, however they arrive: raised, on the record's future, or wrapped by the
        writer) is reported once and waited out for good — the worker is stopping."""
        token = object()

        async def attempt() -> None:
            try:
                await send()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                refusal = aiokafka_refusal(exc)
                if refusal is None:
                    name, text = type(exc).__name__, str(exc)
                    self.unacked[token] = (self.unacked[token][0], topic, text
                                           if text.startswith(name) else f"{name}: {text}")
                    raise  # retried
                self.on_refused(refused_what(f"write {kind} to {topic}", topic, refusal),
                                refusal)
                await asyncio.get_running_loop().create_future()  # until cancelled
        self.unacked[token] = (self.clock(), topic, "")
        try:
            await retry_forever(f"sending {kind}", attempt,
                                on_retry=lambda _e: metrics.RETRIES.labels("kafka").inc())
        finally:  # acknowledged, or cancelled (a revoke, a stop): not waiting any more
            del self.unacked[token]


def _log_refusal(what: str, refusal: Refusal) -> None:
    log.error("the broker refused this principal to %s: %s; not retrying", what, refusal)


def refused_what(what: str, topic: str | None, refusal: Refusal) -> str:
    """The refused operation: ``what``, unless aiokafka named another topic than ``topic``
    (a record of another topic in the same send, refused its metadata)."""
    if refusal.resource and refusal.code == 29 and refusal.resource != topic:
        return f"write to {refusal.resource}"
    return what
