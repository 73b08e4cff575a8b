"""The Salesforce write-back sink: outcomes topic → batched sObject Collections updates.

One thread does everything (poll, decode, batch, PATCH, dead-letter, commit), so there is
never a write in flight while offsets are computed. The loop polls at least once a second,
even while paused, so group membership survives long pauses; the longest stretch without
a poll is one flushing turn (``FLUSH_BUDGET_S`` plus the calls of one batch, each bounded by
``SF_TIMEOUT_S``: one, or about 2·log2(200) more per record at fault while Salesforce's
400 is bisected to the record that caused it) or a revoke (``REVOKE_BUDGET_S`` plus one batch).
A flush starts no call whose worst case would end past ``max.poll.interval.ms`` since the
last poll, less ``WRITE_MARGIN_S`` (:meth:`Sink._may_call`): the calls it has no time for go
back to the pending map, capped at their size, and the bisection goes on after the next
poll. Slow calls bisecting a batch once outlasted the interval: the group was left, the
commit failed and the batch came back, its refused record dead-lettered again.

Order of effects (see :mod:`sinks.batch` for the bookkeeping)::

    consume → decode (undecodable → dead letter) → map → merge into the pending map
    (decode reads plain Avro and the Confluent wire format; a schema id the registry does
    not know → dead letter; registry unreachable → retried, then exit uncommitted)
    flush (size, idle input or linger) → PATCH composite/sobjects → ack / retry / fail per record
    complete outcomes (dead letters produced first) → producer.flush → commit offsets

Pauses: ``REQUEST_LIMIT_EXCEEDED`` pauses every assigned partition for
``SINK_LIMIT_BACKOFF_S`` (doubling while it persists, up to 16x); an outage (5xx,
unreachable, auth refused — a login refused for good too, or a 401/403/404 no record caused:
see :mod:`sinks.writer`) pauses with the transient backoff; both requeue the batch
without counting attempts, then probe with it. So do records refused one by one for a
permission the integration user lost (Update or Read on the object, Edit on a field
written: describe says so, asked once per object and flush, :mod:`sinks.writer`), while the
rest of their call is settled. Too many unacknowledged outcomes
(``SINK_MAX_PENDING``) pause for backpressure. All are visible in ``/healthz`` and
``sfprov_sink_paused``. Nothing is committed that Salesforce did not acknowledge, so a
pause, a crash or a SIGKILL loses nothing — it only redelivers.

Probing (:mod:`sinks.probing`): a batch that fails as a whole the same retryable way
every time is bisected (that batch only), and a record whose call alone keeps failing is
sent alone after the others and dead-lettered only while Salesforce answers most other
calls — so neither blocks what is behind it, and an outage or an org failing calls at
random dead-letters nothing.

Stale writes: a sink frozen past its session timeout (while another member took its
partitions and wrote newer outcomes) may still send what it held when it wakes up. The
outcome fence (:mod:`sinks.fence`) makes Salesforce refuse such a write per record; the
sink settles those records as superseded. Its field is checked before consuming starts.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any

from confluent_kafka import (
    OFFSET_INVALID,
    Consumer,
    KafkaException,
    Message,
    TopicPartition,
)
from confluent_kafka import KafkaError as CKafkaError

from common.avro import AvroSerde, SerdeError, registry_for
from common.backoff import Backoff
from common.connection import KafkaConnection, is_refusal, refusal_message
from common.errors import (
    ConfigError,
    KafkaAccessError,
    KafkaError,
    SalesforceAuthError,
    SalesforceError,
    SalesforceLimitError,
)
from common.salesforce import RETRY_LATER
from common.settings import SINK_MAX_POLL_INTERVAL_MS, KafkaSettings, SinkSettings
from sinks import fence, start
from sinks import metrics as m
from sinks.batch import Batcher, Entry, OffsetTracker, RecordError, Tracked
from sinks.beating import BeatingClient
from sinks.deadletters import DeadLetters
from sinks.mapping import updates_for
from sinks.observability import SinkOps
from sinks.pausing import BACKPRESSURE, LIMIT, OUTAGE, Pauses
from sinks.probing import Probing
from sinks.writer import UNKNOWN_ACCESS, CollectionClient, CollectionWriter

log = logging.getLogger(__name__)
FLUSH_BUDGET_S = 1.0  # flushing in one loop turn, before polling again
REVOKE_BUDGET_S = 10.0  # flushing in a revoke callback, before letting the partitions go
REGISTRY_WAIT_S = 60.0  # an unreachable schema registry: retry a decode this long, then exit
#: what a flushing turn may take besides its calls before the next poll (describes, the fence
#: check, the dead letters' delivery, the commit): no call starts that could end later than
#: max.poll.interval.ms less this after the last poll
WRITE_MARGIN_S = 60.0


@dataclass
class RunStats:
    consumed: int = 0
    records_written: int = 0
    calls: int = 0
    dead_letters: int = 0
    commits: int = 0
    superseded: int = 0


class Sink:
    """``Sink(kafka, settings, client).run(max_records=..., timeout=...)``; ``stop()`` from
    a signal handler or another thread ends the loop with a drain and a final commit."""

    def __init__(self, kafka: KafkaSettings, settings: SinkSettings, client: CollectionClient,
                 *, consumer_config: dict[str, Any] | None = None) -> None:
        self.kafka = kafka
        self.settings = settings
        self.client = client
        self._salesforce = BeatingClient(client, self.beat)  # what the flushes call (/livez)
        self.writer = CollectionWriter(self._salesforce, chunk_size=settings.batch_size)
        self.serde = AvroSerde("provisioning_outcome", topic=kafka.outcomes,
                               registry=registry_for(kafka))
        self.batcher = Batcher()
        self.offsets = OffsetTracker()
        self.stats = RunStats()
        self.connection = KafkaConnection.from_settings(kafka)
        config = {
            **self.connection.librdkafka(),
            "group.id": kafka.topic(settings.group_id),
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "isolation.level": "read_committed",
            "auto.offset.reset": "earliest",
            "session.timeout.ms": settings.session_timeout_ms,
            "max.poll.interval.ms": SINK_MAX_POLL_INTERVAL_MS,
        }
        if settings.instance_id:
            config["group.instance.id"] = settings.instance_id
        config.update(consumer_config or {})
        self.consumer = Consumer(config)
        self.dead_letters = DeadLetters(kafka, self.connection)
        self._stop = threading.Event()
        self._stop_at: float | None = None  # when the stop was asked (the drain's deadline)
        self._assigned: list[TopicPartition] = []
        self._owned: set[int] = set()  # the partitions of _assigned
        self._rebalances = 0  # assignment changes so far (_poll: a message from before one)
        self.started = False  # its first assignment came, an empty one too (/readyz)
        self.pauses = Pauses(self._pause_changed)
        self._retry_backoff = Backoff(settings.retry_backoff_s, max(
            settings.retry_backoff_s, settings.retry_backoff_max_s), jitter=False)
        # REQUEST_LIMIT_EXCEEDED: the pause doubles while the limit persists, up to 16x
        self._limit_backoff = Backoff(settings.limit_backoff_s, settings.limit_backoff_s * 16,
                                      jitter=False)
        self._outage_streak = 0
        self._limit_streak = 0
        self.probing = Probing()
        self._heartbeat = time.monotonic()
        self._polled_at = time.monotonic()  # the last call of consumer.poll (_may_call)
        self._last_commit = 0.0
        self._last_arrival = 0.0  # when the last poll returned a message (idle flush)
        self._warned: dict[str, float] = {}
        self._fence_unchecked = False  # the start-up check of the fence field is still due
        self.ops = SinkOps(self)  # probes, lag gauge, tracing (sinks.observability)

    # -- lifecycle ---------------------------------------------------------------------

    def stop(self, *_: Any) -> None:
        if self._stop_at is None:
            self._stop_at = time.monotonic()
        self._stop.set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)

    def run(self, *, max_records: int | None = None, timeout: float | None = None,
            exit_when_idle: bool = False) -> RunStats:
        """Consume until stopped, ``max_records`` consumed, ``timeout`` seconds passed, or
        (``exit_when_idle``) every assigned partition is consumed to its end and settled.
        Always ends with a drain (flush for up to ``SINK_DRAIN_TIMEOUT_S``) and a commit.
        Raises :class:`~common.errors.ConfigError` before consuming when the org lacks the
        fence field."""
        deadline = None if timeout is None else time.monotonic() + timeout
        try:  # a missing field raises; unanswered, the check is left to the first flush
            self._fence_unchecked = fence.start_check(self._salesforce,
                                                      self.settings.fence_field)
        except BaseException:
            self.consumer.close()
            self.dead_letters.close()
            raise
        self.consumer.subscribe([self.kafka.outcomes], on_assign=self._on_assign,
                                on_revoke=self._on_revoke, on_lost=self._on_lost)
        idle_checked = 0.0
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                self._heartbeat = now
                if deadline is not None and now >= deadline:
                    break
                if max_records is not None and self.stats.consumed >= max_records:
                    break
                self.pauses.expire(now, can_probe=bool(self.batcher.ready(now)),
                                   backpressure_over=self.offsets.outstanding()
                                   <= self.settings.max_pending // 2)
                want = self._poll_size(max_records)
                messages = self._poll(want, self._poll_timeout(now))
                for message in messages:
                    self._handle(message)
                self._flush_due(backlog=len(messages) == want)
                self._commit(force=False)
                if exit_when_idle and not messages and time.monotonic() - idle_checked > 1.0:
                    idle_checked = time.monotonic()
                    if self._caught_up():
                        break
            self._drain()
            self._commit(force=True)
        finally:
            self.consumer.close()
            self.dead_letters.close()
        self.stats.dead_letters = self.dead_letters.sent
        log.info("sink stopped", extra={"count": self.stats.consumed})
        return self.stats

    # -- consuming ---------------------------------------------------------------------

    def _handle(self, message: Message) -> None:
        error = message.error()
        if error is not None:
            if is_refusal(error):  # an ACL or the credentials: retrying cannot help
                raise KafkaAccessError(refusal_message(
                    self.connection, f"consume {self.kafka.outcomes} in group "
                    f"{self.kafka.topic(self.settings.group_id)}", error))
            if error.code() == CKafkaError.INVALID_SESSION_TIMEOUT:  # a setting: exit 64
                raise ConfigError(
                    f"SINK_SESSION_TIMEOUT_MS: the broker refuses a session of "
                    f"{self.settings.session_timeout_ms} ms (its group.min.session.timeout.ms "
                    f"and group.max.session.timeout.ms: 6,000 to 1,800,000 by default)")
            if error.fatal():
                raise KafkaError(f"fatal consumer error: {error}")
            if self._warned.get(str(error), 0.0) < time.monotonic() - 60:
                self._warned[str(error)] = time.monotonic()  # once a minute per kind
                log.warning("consumer error: %s", error)
            return
        partition, offset = message.partition(), message.offset()
        assert partition is not None and offset is not None  # set on every consumed record
        if partition not in self._owned:
            # fetched before its partition was revoked (consume() serves the rebalance):
            # tracked now, its commit would pass an outcome still open at the revocation,
            # which the new owner then never writes — the new owner redelivers this one
            return
        self.stats.consumed += 1
        headers = message.headers()  # None: the record has none
        tracked = Tracked(partition, offset, message.key(), message.value(), headers=headers)
        headers = headers or []
        self.offsets.consumed(tracked.partition, tracked.offset)
        try:
            if tracked.value is None:
                raise SerdeError("tombstone (null value) on the outcomes topic")
            tracked.outcome = self._decode(tracked.value, headers)
            updates = updates_for(tracked.outcome,
                                  set_order_activated=self.settings.set_order_activated,
                                  fence_field=self.settings.fence_field)
        except (SerdeError, KeyError, TypeError, ValueError) as exc:
            if getattr(exc, "retryable", False):  # the registry, not the record
                if self._stop.is_set():
                    return  # left uncommitted: redelivered after the restart
                raise
            m.OUTCOMES.labels("undecodable").inc()
            self.dead_letters.send(tracked, reason=f"undecodable outcome: {exc}",
                                   error_class=type(exc).__name__)
            self._complete(tracked)
            return
        m.OUTCOMES.labels(tracked.outcome["status"]).inc()
        self.ops.taken(tracked, headers)
        if updates:
            self.batcher.add(tracked, updates, time.monotonic())
        else:
            self._complete(tracked)
        if self.offsets.outstanding() >= self.settings.max_pending:
            self.pauses.pause(BACKPRESSURE, 0.0)

    def _decode(self, value: bytes, headers: Any) -> dict[str, Any]:
        """Either wire format. A schema id the registry does not know is a (non-retryable)
        SerdeError → dead letter; an unreachable registry is retried here for up to
        ``REGISTRY_WAIT_S`` (well inside ``max.poll.interval.ms``), then raised: the sink
        exits without committing past the record, which is redelivered after the restart."""
        deadline = time.monotonic() + REGISTRY_WAIT_S
        backoff = Backoff(0.25, 5.0)
        while True:
            try:
                return self.serde.decode(value, headers)
            except SerdeError as exc:
                delay = backoff.next_delay()
                if not exc.retryable or time.monotonic() + delay > deadline:
                    raise
                log.warning("schema registry unavailable; retrying in %.1fs: %s", delay, exc)
                if self._stop.wait(delay):
                    raise

    def _poll(self, want: int, timeout: float) -> list[Message]:
        """Up to ``want`` messages, returning as soon as there is one.

        ``consume(n, timeout)`` waits until ``n`` messages arrived *or* the timeout passed:
        with a trickle of outcomes it sat the whole timeout (1 s) on the first one, and its
        linger then started only after that — the ~1.6 s sawtooth of the latency plot. So:
        block on ``poll`` for the first message, then take what else is already fetched.
        """
        self._polled_at = time.monotonic()
        first = self.consumer.poll(timeout)
        if first is None:
            return []
        self._last_arrival = time.monotonic()
        if want <= 1:
            return [first]
        rebalances = self._rebalances
        rest = self.consumer.consume(num_messages=want - 1, timeout=0)
        if self._rebalances != rebalances:
            # consume() ran a rebalance after ``first`` was handed out: its partition was
            # revoked and committed without it (assigned again, it is fetched again from
            # that commit); what consume() returned is of the new assignment
            return rest
        return [first, *rest]

    def _poll_size(self, max_records: int | None) -> int:
        """At most 500, never past ``max_records`` nor (much) past ``SINK_MAX_PENDING``."""
        room = max(1, self.settings.max_pending - self.offsets.outstanding())
        if max_records is not None:
            room = min(room, max_records - self.stats.consumed)
        return min(500, room)

    def _poll_timeout(self, now: float) -> float:
        if self.pauses.blocked(now):
            # no call may go before the pause ends, whatever is ready: sleep until then (at
            # most a second, to serve the consumer). Entries beyond the refused batch are
            # still ready, and the linger arithmetic below would answer 0 on every turn
            return max(0.0, min(1.0, self.pauses.resume_at(now) - now))
        if len(self.batcher.ready(now)) >= self.settings.batch_size:
            return 0.0  # a full batch waits: just serve the consumer, then flush
        if self.pauses.paused and not len(self.batcher):
            return 1.0
        next_at = self.batcher.next_ready_at()
        if next_at is None:
            return 1.0
        if next_at > now:  # only backed-off entries: wake when the first may go again
            return max(0.0, min(1.0, next_at - now + self.settings.linger_s / 4))
        # ready entries: wake for the idle flush or the end of the linger, whichever first
        wake = self.batcher.oldest_since(now) + self.settings.linger_s
        if self.settings.idle_flush_s > 0:
            wake = min(wake, self._last_arrival + self.settings.idle_flush_s)
        return max(0.0, min(1.0, wake - now))

    # -- flushing ----------------------------------------------------------------------

    def _flush_due(self, *, backlog: bool = False) -> None:
        """Flush full batches; a partial one when the last poll drained what the broker had
        (``backlog`` False) and either no outcome arrived for ``SINK_IDLE_FLUSH_S`` (the input
        is idle) or the oldest entry lingered ``SINK_LINGER_S``; after ten lingers in any case.
        Otherwise, while catching up, the remainder of each poll ages past the linger during
        the full flushes and goes out as a small extra call every time (15 % more calls at
        200 ms per call). Flushing stops after ``FLUSH_BUDGET_S`` so the loop polls again:
        heartbeats and rebalances are served between calls, never after a long run of them.
        """
        started = time.monotonic()
        while True:
            now = time.monotonic()
            if self.pauses.blocked(now) or now - started >= FLUSH_BUDGET_S:
                return
            if self._stop.is_set():  # the drain takes over, within its deadline
                return
            full = len(self.batcher.ready(now)) >= self.settings.batch_size
            lingered = self.batcher.due(now, batch_size=self.settings.batch_size,
                                        linger_s=self.settings.linger_s)
            # a backlog of record-less outcomes (Skipped) must not hold a few records forever
            overdue = self.batcher.due(now, batch_size=self.settings.batch_size,
                                       linger_s=10 * self.settings.linger_s)
            idle = (self.settings.idle_flush_s > 0 and not backlog
                    and now - self._last_arrival >= self.settings.idle_flush_s
                    and bool(self.batcher.ready(now)))
            if not (full or overdue or ((lingered or idle) and not backlog)):
                return
            self._flush(now)

    def _flush(self, now: float) -> bool:
        """One call's worth of ready entries; False when the whole call failed, or records
        were refused for a permission the integration user lost (the sink then pauses)."""
        entries = self.batcher.take(now, self.settings.batch_size)
        if not entries:
            return True
        started = time.monotonic()
        checking = self._fence_unchecked  # a failure of the check says nothing of the batch
        try:
            if self._fence_unchecked:
                assert self.settings.fence_field is not None
                fence.check_field(self._salesforce, self.settings.fence_field)
                self._fence_unchecked = checking = False
            result = self.writer.write(entries, may_call=self._may_call)
            self.ops.called(entries, time.monotonic() - started, "ok")
        except SalesforceLimitError as exc:
            m.ERRORS.labels(LIMIT, "call").inc()
            self.probing.call_failed()
            self._limit_streak += 1
            backoff = self._limit_backoff.ceiling(self._limit_streak - 1)
            self._requeue_all(entries, now + backoff)
            self.pauses.pause(LIMIT, now + backoff)
            log.warning("Salesforce API limit reached; paused for %.1fs", backoff,
                        extra={"error_code": exc.error_code, "count": len(entries)})
            self._record_usage()
            self.stats.calls += 1
            return False
        except SalesforceError as exc:
            # an outage, or a refusal no record caused (the writer fails the records a 400
            # is about): a login refused, permissions, the API version — every outcome would
            # fail alike, so none is dead-lettered; the sink waits for the fix, probing
            m.ERRORS.labels(exc.error_code or type(exc).__name__, "call").inc()
            self.stats.calls += 1
            # a 408/429 says "later": its Retry-After is waited out, the calls not shrunk
            later = exc.status in RETRY_LATER
            # a 400 page without Salesforce's error (a proxy or a WAF in front of it): a
            # record's contents may provoke it, so it is isolated as a failing call is (a
            # page refusing every call blames none: no call is answered in between)
            page = exc.status == 400 and exc.error_code is None
            suspect = ((exc.retryable and not later) or page) and \
                not isinstance(exc, SalesforceAuthError) and not checking
            alone = len(entries) == 1 and entries[0].cap == 1
            blamed = suspect and alone and self._failed_alone(entries[0], exc, now)
            self.probing.call_failed()
            if blamed:
                return False
            if suspect and not alone:
                self.probing.shrink(entries)
            self._outage_streak += 1
            backoff = max(self._backoff(self._outage_streak),
                          (exc.retry_after or 0.0) if later else 0.0)
            self._requeue_all(entries, now + backoff)
            self.pauses.pause(OUTAGE, now + backoff)
            if exc.retryable or page:
                log.warning("Salesforce call failed (%s); paused for %.1fs", exc, backoff,
                            extra={"error_code": exc.error_code, "count": len(entries)})
            else:
                log.error("Salesforce refused the call, not for any record (%s): nothing is "
                          "written or dead-lettered until it accepts (check the sink's "
                          "credentials and permissions); paused for %.1fs", exc, backoff,
                          extra={"error_code": exc.error_code, "count": len(entries)})
            return False
        self.probing.call_answered()
        self.stats.calls += result.calls
        m.BATCHES.inc(result.calls)
        m.BATCH_SIZE.observe(len(entries))
        self._record_usage()
        if not result.no_access:
            self._limit_streak = self._outage_streak = 0
            self.pauses.lift(LIMIT, OUTAGE)
        self._settle(result.acked, result.transient, result.permanent, now)
        self._superseded(result.superseded)
        deferred = self._defer(result.unsent, now)
        if result.no_access:
            self._hold(result.no_access, result.access_problems, result.describe_limited, now)
            return False
        return not deferred

    def _may_call(self) -> bool:
        """Whether a flush may start another Salesforce call: not when the call's worst case
        (:attr:`sinks.beating.BeatingClient.bound_s`) could end later than ``max.poll.interval.ms`` after the
        last poll, less ``WRITE_MARGIN_S``, nor once the drain's deadline has passed (a
        stop asked during a flush)."""
        now = time.monotonic()
        poll_by = self._polled_at + SINK_MAX_POLL_INTERVAL_MS / 1000 - WRITE_MARGIN_S
        if now + self._salesforce.bound_s > poll_by:
            return False
        return self._stop_at is None or now < self._stop_at + self.settings.drain_timeout_s

    def _defer(self, unsent: list[list[Entry]], now: float) -> bool:
        """Put back the calls a flush had no time for (:meth:`_may_call`), ready at once, no
        attempt counted. Each record is capped at its call's size (``Entry.cap``, as
        :mod:`sinks.probing` caps): a bisection of a refused batch goes on from where it
        stopped; taken whole again, it would start over and never end. True if any."""
        for call in unsent:
            for entry in call:
                entry.cap = min(entry.cap or len(call), len(call))
                self.batcher.retry(entry, now, count_attempt=False)
        if unsent:
            log.info("flush out of time: %d record(s) in %d call(s) wait for the next turn "
                     "(max.poll.interval.ms, or the drain's deadline)",
                     sum(map(len, unsent)), len(unsent),
                     extra={"count": sum(map(len, unsent))})
        return bool(unsent)

    def _hold(self, held: list[tuple[Entry, RecordError]], problems: list[str],
              limited: bool, now: float) -> None:
        """Records refused for a permission the integration user lost (or that describe
        could not tell about): a refusal no record caused, so none is failed. They are
        requeued without counting attempts and the sink pauses with the outage backoff
        (the API-limit one when describe met the limit), then probes with them."""
        for _entry, error in held:
            m.ERRORS.labels(error.code, "record").inc()
        if limited:
            self._limit_streak += 1
            backoff = self._limit_backoff.ceiling(self._limit_streak - 1)
        else:
            self._outage_streak += 1
            backoff = self._backoff(self._outage_streak)
        self._requeue_all([entry for entry, _error in held], now + backoff)
        self.pauses.pause(LIMIT if limited else OUTAGE, now + backoff)
        codes = sorted({error.code for _entry, error in held})
        known = not all(p.startswith(UNKNOWN_ACCESS) for p in problems)
        log.log(logging.ERROR if known else logging.WARNING,
                "Salesforce refused %d record(s) (%s), not for any record: %s; they are "
                "neither written nor dead-lettered until it is granted; paused for %.1fs",
                len(held), ", ".join(codes), "; ".join(problems), backoff,
                extra={"error_code": codes[0], "count": len(held)})

    def _superseded(self, refused: list[tuple[Entry, RecordError]]) -> None:
        """Records Salesforce refused because it holds a newer outcome: settled unwritten."""
        if not refused:
            return
        for entry, _error in refused:
            m.SUPERSEDED.labels(entry.key.sobject).inc()
            for tracked in self.batcher.ack(entry):
                self._complete(tracked)
        self.stats.superseded += len(refused)
        shown = ", ".join(str(entry.key) for entry, _ in refused[:5])
        log.info("%d record(s) not written: Salesforce holds a newer outcome (superseded): "
                 "%s%s", len(refused), shown, ", …" if len(refused) > 5 else "",
                 extra={"count": len(refused)})

    def _settle(self, acked: list[Entry], transient: list[tuple[Entry, RecordError]],
                permanent: list[tuple[Entry, RecordError]], now: float) -> None:
        done: list[Tracked] = []
        for entry in acked:
            m.RECORDS_WRITTEN.labels(entry.key.sobject).inc()
            for tracked in entry.sources:
                tracked.written = True
            done.extend(self.batcher.ack(entry))
        self.stats.records_written += len(acked)
        for entry, error in transient:
            m.ERRORS.labels(error.code, "record").inc()
            if entry.attempts + 1 >= self.settings.max_attempts:
                exhausted = RecordError(error.key, error.code,
                                        f"{error.message} (gave up after {entry.attempts + 1} "
                                        "attempts)", error.fields)
                done.extend(self.batcher.fail(entry, exhausted))
            else:
                entry.call_failures = 0  # its call was answered
                self.batcher.retry(entry, now + self._backoff(entry.attempts + 1))
        for entry, error in permanent:
            m.ERRORS.labels(error.code, "record").inc()
            log.warning("Salesforce refused %s: %s %s", entry.key, error.code, error.message,
                        extra={"error_code": error.code})
            done.extend(self.batcher.fail(entry, error))
        for tracked in done:
            self._complete(tracked)

    def _requeue_all(self, entries: list[Entry], not_before: float) -> None:
        for entry in entries:
            if entry.isolated:  # after the pause, probe with another record first
                self.batcher.retry(entry, not_before + self._backoff(entry.lone_failures),
                                   count_attempt=False)
            else:
                self.batcher.retry(entry, not_before, count_attempt=False)

    def _failed_alone(self, entry: Entry, exc: SalesforceError, now: float) -> bool:
        """The call of ``entry`` alone (its cap is 1) failed retryably; True when the
        record is to blame (:meth:`sinks.probing.Probing.blame`): the failure counts as an
        attempt (dead letter at ``SINK_MAX_ATTEMPTS``), the record backs off on its own and
        the others go on unpaused. False: nothing is counted and the caller pauses."""
        blamed = self.probing.blame(entry)
        if not blamed:
            return False
        if entry.attempts + 1 >= self.settings.max_attempts:
            code = exc.error_code or type(exc).__name__
            error = RecordError(entry.key, code, f"{exc} (gave up after {entry.attempts + 1} "
                                "attempts of this record alone, while Salesforce wrote others)")
            log.warning("Salesforce keeps failing the call of %s alone: %s; giving up",
                        entry.key, exc, extra={"error_code": code})
            for tracked in self.batcher.fail(entry, error):
                self._complete(tracked)
        else:
            self.batcher.retry(entry, now + self._backoff(entry.lone_failures))
        return True

    def _backoff(self, attempt: int) -> float:
        """The wait before a record's ``attempt``-th retry (its own count, no jitter)."""
        return self._retry_backoff.ceiling(max(0, attempt - 1))

    def _record_usage(self) -> None:
        usage = getattr(self.client, "api_usage", None)
        if usage:
            m.API_USED.set(usage[0])
            m.API_LIMIT.set(usage[1])

    def _drain(self) -> None:
        """Flush everything pending until done or ``SINK_DRAIN_TIMEOUT_S`` passed — counted
        from the stop's request (SIGTERM), so the flush under way then is within it, and no
        flush starts after it: a stop takes the drain's timeout plus the flush under way at
        its end — one call (``SF_TIMEOUT_S``), which the supervisor's grace
        (:func:`ops.supervisor.stop_grace`) and compose's ``stop_grace_period`` allow for
        (a call refused for one of its records is bisected only while the deadline lasts,
        :meth:`_may_call`); rarely more (an access check or a new login adds one), and a
        stop past the grace is killed: nothing lost, the
        offsets of what it had not acknowledged stay uncommitted."""
        deadline = (self._stop_at or time.monotonic()) + self.settings.drain_timeout_s
        if self._assigned:
            self.consumer.pause(self._assigned)  # the polls below only serve callbacks
        while len(self.batcher) and time.monotonic() < deadline:
            now = time.monotonic()
            if self.pauses.blocked(now) or not self.batcher.ready(now):
                wake = max(self.batcher.next_ready_at() or now, self.pauses.resume_at(now))
                if wake >= deadline:
                    break
                time.sleep(max(0.01, min(0.5, wake - now)))
                self._polled_at = time.monotonic()
                self.consumer.poll(0)  # serve rebalance callbacks while waiting
                continue
            # between flushes too: a long drain (SINK_DRAIN_TIMEOUT_S above the poll
            # interval) of a slow bisection never polled, left the group, and its last
            # commit failed (the consumer is paused: this only serves callbacks)
            self._polled_at = time.monotonic()
            self.consumer.poll(0)
            self._flush(now)
        if len(self.batcher):
            log.warning("drain ended with %d records unacknowledged; their offsets stay "
                        "uncommitted and will be redelivered", len(self.batcher))

    # -- completion, dead letters, commits ---------------------------------------------

    def _complete(self, tracked: Tracked) -> None:
        if tracked.errors:
            self.dead_letters.record_errors(tracked)
        elif tracked.outcome is not None and tracked.written:
            # an outcome that wrote nothing (Skipped, Duplicate — a replay's carry their
            # event's hours-old request time — or superseded) has no write-back to time
            wall = time.time()
            for since in ("completed_at", "requested_at"):
                stamp = tracked.outcome.get(since)
                if stamp is not None:
                    m.LAG.labels(since.removesuffix("_at")).observe(
                        max(0.0, wall - stamp.timestamp()))
        self.offsets.complete(tracked.partition, tracked.offset)
        self.ops.completed(tracked)

    def _commit(self, *, force: bool) -> None:
        """Commit what is settled: dead letters on the broker first, then the offsets."""
        m.PENDING.set(self.offsets.outstanding())
        now = time.monotonic()
        if not force and now - self._last_commit < 1.0:
            return
        positions = self.offsets.committable()
        if not positions:
            return
        if not self.dead_letters.settle():
            return
        offsets = [TopicPartition(self.kafka.outcomes, p, o) for p, o in positions.items()]
        try:
            self.consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            log.warning("offset commit failed (will retry): %s", exc)
            return
        self.offsets.committed(positions)
        self._last_commit = now
        self.stats.commits += 1
        m.COMMITS.inc()

    def _pause_changed(self, paused: bool) -> None:
        # what is assigned now; partitions that come later or go are set by the callbacks
        if self._assigned:
            (self.consumer.pause if paused else self.consumer.resume)(self._assigned)

    # -- rebalances --------------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Take ``partitions``: from the group's committed offsets, or, for one without, from
        the start :mod:`sinks.start` chose (and committed) — or stop: a partition that holds
        history and no committed offset, with ``SINK_START_POSITION`` unset, raises
        :class:`~common.errors.ConfigError` (exit 64) before anything of it is written."""
        chosen = start.starts(consumer, self.kafka.outcomes, [p.partition for p in partitions],
                              group=self.kafka.topic(self.settings.group_id),
                              position=self.settings.start_position, beat=self.beat,
                              principal=self.connection.principal)
        partitions = [TopicPartition(p.topic, p.partition, chosen[p.partition])
                      if p.partition in chosen else p for p in partitions]
        consumer.assign(partitions)
        self._assigned = list(partitions)
        self._owned = {p.partition for p in partitions}
        self._rebalances += 1
        self.started = True
        if partitions:
            # both ways: librdkafka keeps a partition's pause flag across revoke and assign
            # (librdkafka #1849, #5111); paused under an earlier assignment and not resumed,
            # it would come back paused for good (nothing fetched, nothing shown)
            (consumer.pause if self.pauses.paused else consumer.resume)(partitions)
        log.info("assigned partitions %s", [p.partition for p in partitions])

    def beat(self, ahead_s: float = 0.0) -> None:
        """The poll loop is alive while a callback waits on the brokers, or a Salesforce
        call for up to ``ahead_s`` more (:class:`sinks.beating.BeatingClient`): ``_heartbeat`` is then that
        call's bound, as if beaten when the call may end at the latest (/livez)."""
        self._heartbeat = time.monotonic() + ahead_s

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Last chance to settle and commit what we hold before another member owns it."""
        started = time.monotonic()
        # stopping (the close after the drain): the drain has flushed what its deadline let
        # it — flushing again here would add a revoke's budget and a call past it to the
        # stop, past the supervisor's grace (SIGKILL); what is acknowledged is committed
        while not self._stop.is_set() and time.monotonic() - started < REVOKE_BUDGET_S:
            now = time.monotonic()
            if not self.batcher.ready(now) or self.pauses.blocked(now) or not self._flush(now):
                break
        self._commit(force=True)
        self._forget(consumer, partitions)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._forget(consumer, partitions)

    def _forget(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Drop what is held for ``partitions``, which leave, and resume them: a pause must
        not outlive the assignment it was made for (see ``_on_assign``). Resuming a partition
        still assigned until the callback returns is harmless: nothing is polled meanwhile,
        and ``_handle`` leaves a message of a partition not owned to its owner."""
        if partitions:
            consumer.resume(partitions)
        lost = {p.partition for p in partitions}
        self.ops.forget(lost)  # their trace spans end, marked revoked
        self.batcher.forget(lost)
        self.offsets.forget(lost)
        self._assigned = [p for p in self._assigned if p.partition not in lost]
        self._owned -= lost
        self._rebalances += 1

    def _caught_up(self) -> bool:
        """Every assigned partition consumed to its high watermark, settled and committed.

        Pitfall: with transactional producers the high watermark counts the commit marker;
        librdkafka moves the position past it, so ``position >= high`` still holds.
        """
        if not self._assigned or len(self.batcher) or self.offsets.outstanding():
            return False
        self._commit(force=True)
        try:
            committed = {p.partition: p.offset
                         for p in self.consumer.committed(self._assigned, timeout=5)}
            positions = self.consumer.position(self._assigned)
            marks = {tp.partition: self.consumer.get_watermark_offsets(tp, timeout=5,
                                                                       cached=False)
                     for tp in positions}
        except KafkaException as exc:
            log.info("caught-up check failed (will ask again): %s", exc)
            return False
        for tp in positions:
            low, high = marks[tp.partition]
            position = tp.offset if tp.offset != OFFSET_INVALID else committed[tp.partition]
            if high > low and (position < high or committed[tp.partition] < high):
                return False
        return True

    # -- health ------------------------------------------------------------------------

    def health(self) -> tuple[bool, dict[str, Any]]:
        now = time.monotonic()
        alive = now - self._heartbeat < 60 and self.dead_letters.failure is None
        usage = getattr(self.client, "api_usage", None)
        return alive, {
            "status": "paused" if self.pauses.paused else "running",
            **self.pauses.snapshot(now),
            "assigned_partitions": [p.partition for p in self._assigned],
            "pending_outcomes": self.offsets.outstanding(),
            "pending_records": len(self.batcher),
            "api_usage": {"used": usage[0], "limit": usage[1]} if usage else None,
            "consumed": self.stats.consumed, "records_written": self.stats.records_written,
            "calls": self.stats.calls, "dead_letters": self.dead_letters.sent,
            "superseded": self.stats.superseded,
        }
