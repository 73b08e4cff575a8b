"""The source connector: Salesforce Pub/Sub API → Kafka, exactly once.

Life of the process (:meth:`Connector.run`)::

    init_transactions          fence an older instance (its open transaction is aborted)
    owner record               committed alone: this instance claimed the stream last
    load_position              read_committed, to the end of the offsets topic
    loop:
      subscribe                CUSTOM after the committed replay id (or the preset; with
                               no usable committed position, a keepalive's replay id still
                               held from the last stream is committed first and used)
      take FetchResponses      in delivery order, until CONNECTOR_MAX_BATCH events (a response
                               is never split: up to 99 more)
      one Kafka transaction    requests + dead letters + the position record, then commit
      only then                move the in-memory position, ask Salesforce for more
      on any end of stream     cancel, wait (backoff / limit wait), resubscribe from the
                               *committed* position; anything received but not committed
                               is dropped and fetched again

Why exactly once: a record and the position that covers it commit atomically; after a crash
the connector resumes after the committed position, so an uncommitted batch is fetched again
and a committed one is not. Deduplication by event uuid is not needed.

Failure policies:

* invalid/corrupted stored replay id → ``SF_EVENTS_INVALID_REPLAY``: a ``replay_gap`` record
  (last good id and time, policy, error) is committed to the replay-gaps topic and logged;
  EARLIEST/LATEST then subscribe with that preset until a new position is committed (the bad
  id is never retried) — by this instance, or by a newer one met meanwhile: a position read
  again after a reopen that is not the refused one ends the preset, so a resumed instance
  goes on after what the newer one wrote instead of replaying it all again (EARLIEST) or
  skipping past it (LATEST); FAIL exits with :data:`EXIT_REPLAY_INVALID`. The gap's pass
  (:mod:`connectors.reconciler`) is armed when the next stream is accepted (answers, or stays
  open ``GAP_ARM_OPEN_S`` on a connected channel);
  after a LATEST one it covers the Orders changed until then, not only until the gap's
  time: what was published before a LATEST stream was accepted (during a slow gap commit,
  a backoff, a failed open) is skipped too.
* auth error → re-authenticate (JWT) and resume; limit / concurrent-client errors → wait
  ``SF_PUBSUB_LIMIT_BACKOFF_S`` (``/healthz`` reports 503 meanwhile); others → capped
  exponential backoff with jitter.
* watchdog: nothing (events or keepalives) for ``SF_PUBSUB_STALL_TIMEOUT_S`` → cancel and
  resubscribe.
* fenced by a newer instance → log it and exit :data:`EXIT_FENCED` (no standby: the newer
  instance owns the stream; do not auto-restart on this code or the two will take turns).
  Fenced at start-up (in ``init_transactions`` or the owner record's transaction): at
  once; later, only once the owner record says so (below).
* paused past the transaction timeout (``CONNECTOR_TRANSACTION_TIMEOUT_S``: SIGSTOP, a frozen
  VM, a long GC, a broker away) with a transaction open → the broker aborts it (its records
  stay invisible to ``read_committed`` readers) and bumps the epoch; the resumed producer
  gets exactly what a newer instance's fence gives, fatal ``_FENCED`` (``connectors.writer``
  has what was measured). The failed transaction's age tells them apart — the broker cannot
  have timed out a younger one: older than the timeout → perhaps only our own timeout
  (``TransactionTimedOutError``) → after the resubscribe backoff, a new producer's
  ``init_transactions`` (fencing a newer instance, if any, and aborting its open
  transaction), the owner record, the position read again, and a resubscribe from it:
  in-process, no operator, no restart. Younger → a newer instance, unless the pause stopped
  the host's clocks too (a hypervisor freeze: the age reads as young). So after the backoff
  the last owner record (:mod:`connectors.offsets`) is read: another instance's → it
  claimed the stream after our last init → :data:`EXIT_FENCED`; this instance's → no other
  has claimed it since, the transaction timed out unseen → handled as a
  ``TransactionTimedOutError``; none, or the read failed → :data:`EXIT_FENCED` (a read
  failure must not turn a real fence into a take-over). Nothing is lost (the aborted batch
  is fetched again) or doubled (the position is read after the fence, so it includes
  whatever a newer instance committed). Two live instances cannot take turns: the newer
  one commits its owner record right after its init, so the older one, fenced young, finds
  it and exits 3; the older one, past its timeout (or reading before that record landed),
  takes the stream back with a new init and owner record, and the one it fences then fails
  a *young* transaction, finds an owner record not its own, and exits 3. Paused *between*
  transactions, nothing was open and nothing timed out: it carries on (or, fenced
  meanwhile, fails its next, young, transaction: exit 3). Repeated timeouts back off like
  any subscription error.
* the producer failed otherwise (librdkafka's fatal state without a fence, e.g. the broker
  answered an abort with ``INVALID_TXN_STATE`` while nodes were away; or a
  ``commit_transaction`` that timed out on every retry, which librdkafka keeps as the call in
  progress, so not even an abort ends it; or an abort that did not get through, Kafka cut
  off while events flow: ``ProducerFailedError``) → the same as after a
  transaction timeout: after the backoff a new producer, the position read again, a
  resubscribe. It is what a supervisor's restart would do (that ``init_transactions``
  fences a newer instance just the same, and settles a commit left in progress), minus the
  restart; a newer instance's fence still arrives as a fence (exit 3).

Keepalives: an empty FetchResponse carries ``latest_replay_id``. It is committed (throttled by
``SF_PUBSUB_KEEPALIVE_COMMIT_S``, in its own small transaction) only when every event
delivered before it is committed and the server still had our credit
(``pending_num_requested > 0``) — otherwise events we had not asked for yet could lie
before it. It is committed even when unchanged: that keeps ``committed_at`` (the position's
age on /metrics) honest on a quiet channel, and makes an idle instance that was fenced find
out within one interval instead of at its next event.

Not throttled while the connector has no usable committed position (none stored yet, or a
preset in force after a replay gap): until one is committed, every resubscribe would use the
preset, and LATEST skips whatever was published since the last stream opened. So the first
keepalive is committed at once (durable across a restart too), and a keepalive still held
when its stream ended (the end arrived with it, or its commit failed) is committed before the
resubscribe, which then is CUSTOM after it instead of the preset. Held means valid: no
unwritten event precedes it, and a reopen that reads another position drops it. A LATEST
stream opened again all the same (the last one ended before its first keepalive, which may
take 270 s, or its batch was not written) records a ``replay_gap`` at its opening, so the gap
pass re-requests the Orders it skipped; the first stream of a fresh start records none (that
is where LATEST starts). A fresh start is remembered in Kafka: before that first stream opens,
and after the Salesforce login it needs (a refused login leaves no marker for a stream never
opened), the LATEST marker (:mod:`connectors.offsets`) is committed, so a successor that finds
it and still no position (this process was killed, or exited, before its first position) opens
LATEST *again* and records the gap too, instead of losing what this one received silently.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from common import tracing
from common.avro import AvroSerde, SerdeError, epoch_ms, registry_for
from common.backoff import Backoff
from common.connection import KafkaConnection
from common.errors import (
    ConfigError,
    KafkaAccessError,
    KafkaError,
    PipelineError,
    ProducerFailedError,
    ProducerFencedError,
    ReplayIdInvalidError,
    SalesforceAuthError,
    SalesforceError,
    SalesforceLimitError,
    TransactionTimedOutError,
)
from common.metrics import reads_while_alive
from common.probes import READY_GRACE_S
from common.salesforce import RETRY_LATER, SalesforceAuth
from common.settings import ConnectorSettings, KafkaSettings, SalesforceSettings
from connectors import metrics as m
from connectors.decode import EventDecoder, KafkaRecord, SchemaCache
from connectors.observability import end_spans, event_spans
from connectors.offsets import (
    EVENT,
    INSTANCE,
    KEEPALIVE,
    LatestOpened,
    OffsetCodec,
    Position,
    load_last_gap,
    load_position,
    still_owner,
)
from connectors.pubsub.client import PubSubClient, StreamEnded, Subscription
from connectors.pubsub.errors import REFUSED, REPLAY_INVALID
from connectors.reconciler import GAP_REARM_S
from connectors.writer import Record, TransactionalWriter, transactional_id

log = logging.getLogger("connectors")

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_REPLAY_INVALID = 2
EXIT_FENCED = 3
EXIT_ACCESS_REFUSED = 64  # the broker refused credentials or ACLs: a configuration error
EXIT_CONFIG = 64  # a setting the broker refuses (CONNECTOR_TRANSACTION_TIMEOUT_S)
#: a stream open this long without an error, its channel connected, was accepted (Salesforce
#: refuses a subscription — limit, auth, replay id — within moments): a gap's pass is armed
#: then if no answer came first, as an EARLIEST stream with nothing left to replay answers
#: only with its first keepalive, up to 270 s later. Counted from the channel's connection: an
#: endpoint that never completes the handshake (a firewall, a blackhole) keeps a stream "open
#: unrefused" until gRPC's ~20 s connect timeout, and Salesforce has seen nothing of it
GAP_ARM_OPEN_S = 5.0
#: how long after a gap's detection its LATEST stream may have been accepted, for a
#: successor's re-armed pass (:meth:`Connector._rearm_gap`): a gap record's commit, failed
#: opens with their backoff, a delivery-limit wait (SF_PUBSUB_LIMIT_BACKOFF_S, 300 s)
LATEST_ACCEPT_WITHIN_S = 900.0
#: Salesforce's event retention: a stored replay id a keepalive confirmed current less than
#: this long before Salesforce refused it was refused because the channel was quiet that
#: long (the keepalive carried the last event's id), not because the connector was down
#: past it (README, Reconciliation)
PUBSUB_RETENTION_S = 72 * 3600.0


class StreamStalled(SalesforceError):
    """Watchdog: nothing arrived within the stall timeout."""

    retryable = True
    cause = "watchdog"


class StreamClosed(SalesforceError):
    retryable = True
    cause = "closed"


@dataclass
class Health:
    state: str = "starting"
    resumed_from: str = ""  # the state "resubscribing" followed (a backoff, a stream ended)
    cause: str = ""
    last_error: str = ""
    waiting_until: float = 0.0
    # the last answer from Pub/Sub (a FetchResponse: events or a keepalive); only an answer
    # sets it, not a subscription opened: every resubscribe during an outage did, and the
    # connector answered ready for as long as Pub/Sub was out of reach
    last_response: float = field(default_factory=time.monotonic)
    # when the stream being consumed opened: its silence counts from here (the watchdog,
    # /livez, the silent-stream check)
    subscribed_at: float = field(default_factory=time.monotonic)
    # errors since the connector last moved (a stream answered and what it answered was
    # written, or nothing was due), the first one's time, and where the last one came from
    # ("kafka", "schema_registry" or "salesforce")
    errors: int = 0
    failing_since: float | None = None
    failing_on: str = ""
    committed: Position | None = None
    # Salesforce refused the subscription (no such topic, no access): until a stream answers
    refused: str = ""
    # Salesforce refused the login (the re-authentication failed, or a fresh token was
    # refused again): until a stream answers
    auth_refused: str = ""
    # start-up is over (/readyz "starting" until then, while subscribed or before): the first
    # subscription answered, stayed open GAP_ARM_OPEN_S unrefused on a connected channel (a
    # quiet channel's first keepalive may be 270 s away) or ended in an error, which the
    # other checks then judge
    started: bool = False
    # a stream was accepted once (answered, or stayed open GAP_ARM_OPEN_S unrefused on a
    # connected channel): until then an attempt that ended in an error is not ready at once,
    # no grace (unaccepted)
    accepted: bool = False

    def accept(self) -> None:
        """Salesforce accepted a stream (it answered, or stayed open unrefused)."""
        self.started = self.accepted = True

    def unaccepted(self) -> bool:
        """Start-up ended in an error and no stream has been accepted since: nothing has
        worked yet (a wrong endpoint, an outage, a TLS mismatch, Kafka away), so not ready
        without the grace given to a running connector's errors."""
        return self.started and not self.accepted and self.state not in ("fenced", "failed")

    def failed(self, on: str) -> None:
        """An error ended a subscription (or its transaction): one more in a row."""
        if self.failing_since is None:
            self.failing_since = time.monotonic()
        self.errors += 1
        self.failing_on = on

    def moved(self) -> None:
        """A stream answered and what it answered is written: the errors in a row are over."""
        self.errors, self.failing_since = 0, None

    def stream_silent_s(self, now: float) -> float:
        """How long the stream being consumed has not answered (since it opened, at most)."""
        return now - max(self.last_response, self.subscribed_at)

    def unanswered(self, now: float, grace_s: float = READY_GRACE_S) -> float | None:
        """How long Pub/Sub has not answered, when that makes the connector not ready: at
        least ``grace_s``, and waiting to resubscribe after an error or on a stream opened
        after it. The first retry after a single error (not the watchdog's) is given its
        keepalive period: on a quiet channel a stream reset (RST_STREAM, a GOAWAY) is
        followed by a stream whose first answer, a keepalive, comes up to 270 s after it
        opened, and the watchdog ends a silent one. None: no reason to be not ready."""
        silent = now - self.last_response
        state = self.resumed_from if self.state == "resubscribing" else self.state
        if silent < grace_s or state not in ("backoff", "subscribed"):
            return None
        if state == "subscribed" and self.errors == 0:
            return None  # no error since it last moved: waiting for the next keepalive
        if self.errors == 1 and self.cause != StreamStalled.cause:
            return None
        return silent

    def resubscribing(self) -> None:
        """The Kafka work before a subscription begins (a reopen, a held keepalive position
        or the LATEST marker written: up to minutes with the brokers cut): /livez times it
        from now, instead of as a backoff long over. Start-up keeps its own state."""
        if self.state not in ("starting", "resubscribing"):
            self.resumed_from = self.state  # what readiness judges meanwhile (unanswered)
            self.state, self.waiting_until = "resubscribing", time.monotonic()

    def stuck(self, now: float, grace_s: float = READY_GRACE_S) -> float | None:
        """How long errors have followed each other although Pub/Sub answered meanwhile
        (what it sent could not be written: Kafka away), when at least ``grace_s``."""
        since = self.failing_since
        if since is None or self.last_response < since or now - since < grace_s:
            return None
        return now - since

    def snapshot(self, stall_timeout_s: float) -> tuple[bool, dict[str, Any]]:
        now = time.monotonic()
        limited = self.state == "limited" and self.waiting_until > now
        silent = self.state == "subscribed" and self.stream_silent_s(now) > stall_timeout_s
        healthy = (self.state not in ("fenced", "failed") and not limited and not silent
                   and not self.refused and not self.auth_refused and not self.unaccepted()
                   and self.unanswered(now) is None and self.stuck(now) is None)
        details = {"state": self.state, "cause": self.cause, "last_error": self.last_error,
                   "waiting_s": max(0.0, round(self.waiting_until - now, 1)),
                   "seconds_since_response": round(now - self.last_response, 1),
                   "errors_in_a_row": self.errors,
                   "failing_s": None if self.failing_since is None
                   else round(now - self.failing_since, 1)}
        if self.committed:
            details["replay_id"] = self.committed.replay_id.hex()
            details["committed_age_s"] = round(time.time() - self.committed.committed_at_ms / 1000, 1)
        return healthy, details


class Connector:
    """start/run/stop of one connector instance for one channel."""

    def __init__(self, *, kafka: KafkaSettings, salesforce: SalesforceSettings,
                 connector: ConnectorSettings, auth: SalesforceAuth | None = None,
                 pubsub: PubSubClient | None = None) -> None:
        self.kafka = kafka
        self.settings = connector
        self.auth = auth or SalesforceAuth(salesforce)
        self.pubsub = pubsub or PubSubClient(connector, salesforce, self.auth)
        self.codec = OffsetCodec(connector.name, connector.channel)
        self.txn_id = transactional_id(kafka, connector.name, connector.channel)
        self.writer = TransactionalWriter(kafka, self.txn_id,
                                          transaction_timeout_s=connector.transaction_timeout_s,
                                          owner=self._owner_record)
        serde = AvroSerde("provision_request", topic=kafka.requests,
                          registry=registry_for(kafka))
        self.decoder = EventDecoder(SchemaCache(self.pubsub.get_schema),
                                    channel=connector.channel, connector=connector.name,
                                    serde=serde)
        self.backoff = Backoff(connector.backoff_initial_s, connector.backoff_max_s)
        self.health = Health()
        self.position: Position | None = None
        self.preset_override: str | None = None
        # the stored position Salesforce refused when preset_override was set: a position
        # read again (after a reopen) that differs was committed past the gap by someone
        self._refused_position: Position | None = None
        self.written = 0
        self._stop = threading.Event()
        # a keepalive's replay id no unwritten event precedes, not committed yet
        self._keepalive_candidate: bytes | None = None
        # with a position stored, the first keepalive position is committed one interval
        # after the start (0.0 made it depend on the machine's uptime: at once on a box up
        # longer than the interval); without one, at once (_needs_position)
        self._last_keepalive_commit = time.monotonic()
        # the producer was fenced after a transaction timeout, or failed otherwise: a new
        # one before the next write
        self._reopen_pending = False
        self.reconciler: Any = None  # connectors.reconciler.Reconciler, set by __main__
        self._rearm_at: float | None = None  # a gap's time, armed once a stream answers (or stays open)
        # a stream was opened since the start or the last refused id's gap: a LATEST one
        # opened now skips what was published meanwhile (_subscribe_once)
        self._opened = False
        # the LATEST marker is stored (written by this instance, or found at start-up)
        self._latest_marked = False
        # the preset of the stream being consumed: a gap's pass armed by a LATEST one is
        # bounded by its acceptance (_arm_gap_pass)
        self._stream_preset: str | None = None
        self._auth_failures = 0  # Salesforce auth errors since a stream last answered
        self._auth_refreshed = False  # the last re-authentication got a token
        m.COMMITTED_AGE.set_function(reads_while_alive(self, type(self)._committed_age, -1.0))

    # -- control -------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Stop fetching; the open batch is committed (or aborted) and run() returns 0."""
        self._stop.set()

    def health_check(self) -> tuple[bool, dict[str, Any]]:
        return self.health.snapshot(self.settings.keepalive_timeout_s)

    def _committed_age(self) -> float:
        pos = self.position
        return -1.0 if pos is None else time.time() - pos.committed_at_ms / 1000

    # -- main loop -----------------------------------------------------------------------

    def run(self, *, max_events: int | None = None, timeout_s: float | None = None) -> int:
        deadline = time.monotonic() + timeout_s if timeout_s else None
        latest_opened = LatestOpened()
        try:
            if not self._start_writer():
                self.writer.close()
                return EXIT_OK
            self._set_position(load_position(KafkaConnection.from_settings(self.kafka),
                                             self.kafka.connector_offsets, self.codec,
                                             latest_opened=latest_opened))
        except ProducerFencedError as exc:
            return self._fenced(exc)
        except KafkaAccessError as exc:
            return self._refused(exc)
        except ConfigError as exc:
            return self._config_refused(exc)
        except KafkaError as exc:
            log.error("cannot start: %s", exc)
            return EXIT_ERROR
        log.info("starting: transactional.id %s, %s", self.txn_id,
                 f"resume after replay id {self.position.replay_id.hex()}" if self.position
                 else f"no stored position, replay preset {self.settings.replay}",
                 extra={"replay_id": self.position.replay_id.hex() if self.position else None})
        if latest_opened.at_ms is not None:
            self._latest_marked = True
            if self.position is None:
                self._found_latest_opened(latest_opened.at_ms)
        self._rearm_gap()
        while not self._stop.is_set():
            if deadline and time.monotonic() >= deadline:
                break
            try:
                if self._reopen_pending:
                    self._reopen()
                done = self._subscribe_once(max_events, deadline)
                if done:
                    break
            except ProducerFencedError as exc:
                code = self._on_fenced(exc)
                if code is not None:
                    return code
            except KafkaAccessError as exc:
                return self._refused(exc)
            except ConfigError as exc:  # a new producer's init refused (brokers reconfigured)
                return self._config_refused(exc)
            except ReplayIdInvalidError as exc:
                code = self._replay_invalid(exc)
                if code is not None:
                    return code
            except PipelineError as exc:
                if not self._recover(exc):
                    return EXIT_ERROR
        self.health.state = "stopped"
        log.info("stopped", extra={"count": self.written, "replay_id":
                                   self.position.replay_id.hex() if self.position else None})
        self.writer.close()
        return EXIT_OK

    def _needs_position(self) -> bool:
        """True while a subscription would use a preset: no position committed (or read), or
        the stored one was refused and a preset override is in force."""
        return self.position is None or self.preset_override is not None

    def _subscribe_once(self, max_events: int | None, deadline: float | None) -> bool:
        """One subscription until it ends. True = a bound or stop was reached (exit 0)."""
        self.health.resubscribing()
        if self._keepalive_candidate is not None and self._needs_position():
            # the last stream ended with its keepalive position held (the end came with it,
            # or its commit failed): resume after it, not with the preset — LATEST would skip
            # what was published since that stream ended. Committed first, so a refusal of
            # it is a stored id's (a gap recorded, SF_EVENTS_INVALID_REPLAY applied)
            self._commit_keepalive(self._keepalive_candidate)
        if self.position is not None and self.preset_override is None:
            preset, replay_id = "CUSTOM", self.position.replay_id
        else:
            preset, replay_id = self.preset_override or self.settings.replay, None
        if preset == "LATEST" and self.position is None and not self._latest_marked:
            # log in first (the token is cached for the subscribe): a refused login raises
            # while no marker exists, so a successor does not take a stream that never
            # opened for one whose events were lost (a false gap)
            self.pubsub.login()
            self._mark_latest_opened()
        sub = self.pubsub.subscribe(preset, replay_id)
        skipped, self._opened = preset == "LATEST" and self._opened, True
        self._stream_preset = preset
        self._keepalive_candidate = None  # a position of the last stream's: not this one's
        self.health.state, self.health.subscribed_at = "subscribed", time.monotonic()
        # health.refused stays until this stream answers: a refused subscription is refused
        # again moments after it opens
        log.info("subscribed %s (%s)", self.settings.channel, preset,
                 extra={"replay_id": replay_id.hex() if replay_id else None})
        try:
            if skipped:
                self._latest_again()
            return self._consume(sub, max_events, deadline)
        finally:
            sub.cancel()
            m.BUFFERED.set(0)

    def _consume(self, sub: Subscription, max_events: int | None,
                 deadline: float | None) -> bool:
        stall = self.settings.keepalive_timeout_s
        opened = time.monotonic()
        # when the stream's channel was first seen connected: open GAP_ARM_OPEN_S from then
        # unrefused is accepted. Not from the open: an endpoint that never completes the
        # handshake keeps the stream open, unrefused, until gRPC's connect timeout (~20 s)
        connected_at: float | None = None
        while not self._stop.is_set():
            if deadline and time.monotonic() >= deadline:
                return True
            if connected_at is None and sub.connected():
                connected_at = time.monotonic()
            if self.reconciler is not None:  # re-requests, in this instance's transaction
                self.reconciler.write_due(self.writer.write)
            try:
                first = sub.responses.get(timeout=0.2)
            except queue.Empty:
                if time.monotonic() - max(self.health.last_response, opened) > stall:
                    raise StreamStalled(f"no events or keepalive for {stall:.0f}s") from None
                if connected_at is not None \
                        and time.monotonic() - connected_at >= GAP_ARM_OPEN_S:
                    self.health.accept()  # open unrefused, connected: accepted
                    if self._rearm_at is not None:
                        # not before: a LATEST stream starts where Salesforce handles its
                        # request, and no replay settles on a stream that reached nobody
                        self._arm_gap_pass()
                self._maybe_commit_keepalive()
                continue
            items = [first]
            events = len(getattr(first, "events", ()))
            while events < self.settings.max_batch and not isinstance(items[-1], StreamEnded):
                try:
                    nxt = sub.responses.get_nowait()
                except queue.Empty:
                    break
                items.append(nxt)
                events += len(getattr(nxt, "events", ()))
            ended = items.pop() if isinstance(items[-1], StreamEnded) else None
            # Responses delivered before an error are valid: commit them first.
            if items:
                self._handle(sub, items)
            if max_events is not None and self.written >= max_events:
                return True
            if ended is not None:
                raise ended.error or StreamClosed("server closed the stream")
            self._maybe_commit_keepalive()
            self.health.moved()  # answered, and what is due of it written
        return True

    def _arm_gap_pass(self) -> None:
        """The stream after a gap answered, or stayed open ``GAP_ARM_OPEN_S`` unrefused on a
        connected channel: the gap's pass waits from here for the replay to settle, not from
        a slow start-up, a limit wait or a backoff that held the stream (Orders still to be
        replayed looked stranded).

        A LATEST stream starts where Salesforce handled its first request: later than the
        gap's time by the gap record's commit (up to its retries on a slow broker) and by
        any backoff or failed open since. No stream delivered what was published in between,
        so its pass covers the Orders changed until now (this stream's first answer, or its
        acceptance), not only until the gap's time. Those changed meanwhile whose events
        this stream delivered have their requests written before the pass settles: not
        stranded."""
        at, self._rearm_at = self._rearm_at, None
        if at is not None and self._stream_preset == "LATEST":
            at = max(at, time.time())
        self.reconciler.gap_recorded(at=at)

    def _handle(self, sub: Subscription, responses: list[Any]) -> None:
        self.health.last_response = time.monotonic()
        self.health.accept()
        self.health.refused = self.health.auth_refused = ""
        self._auth_failures = 0
        if self._rearm_at is not None:
            self._arm_gap_pass()
        batch: list[KafkaRecord] = []
        # a keepalive's position is a candidate once every event delivered before it is
        # written: taken up only after this batch's transaction commits (a failed write
        # leaves the last candidate before the batch's first event, which no unwritten
        # event precedes)
        candidate = before_batch = self._keepalive_candidate
        for response in responses:
            if response.events:
                if not batch:
                    before_batch = candidate
                candidate = None
                for event in response.events:
                    batch.append(self.decoder.build(event))
            else:
                m.KEEPALIVES.inc()
                self.backoff.reset()
                if response.latest_replay_id and response.pending_num_requested > 0:
                    candidate = bytes(response.latest_replay_id)
        if batch:
            m.EVENTS_RECEIVED.inc(len(batch))
            m.BUFFERED.set(sub.flow.buffered)
            try:
                self._write_batch(batch)
            except Exception:
                self._keepalive_candidate = before_batch
                raise
            sub.consumed(len(batch))
            m.BUFFERED.set(sub.flow.buffered)  # after the write: not the batch, still shown
        self._keepalive_candidate = candidate

    def _write_batch(self, batch: list[KafkaRecord]) -> None:
        last = batch[-1]
        position = Position(last.replay_id, EVENT, int(time.time() * 1000), last.event_uuid)
        records: list[Record] = []
        spans = event_spans(batch)  # tracing: one root span per event (None when off)
        for rec, span in zip(batch, spans, strict=True):
            topic = self.kafka.dead_letters if rec.dead_letter else self.kafka.requests
            records.append((topic, rec.key, rec.value, rec.headers + tracing.headers_of(span)))
        value, headers = self.codec.position_value(position)
        records.append((self.kafka.connector_offsets, self.codec.key, value, headers))
        try:
            self.writer.write(records)
        except KafkaError:
            m.TRANSACTIONS.labels("batch", "abort").inc()
            raise
        m.TRANSACTIONS.labels("batch", "commit").inc()
        self.health.moved()
        end_spans(spans)
        self._set_position(position)
        self.preset_override = None
        self.backoff.reset()
        self.written += len(batch)
        for rec in batch:
            extra = {"event_uuid": rec.event_uuid, "order_id": rec.order_id,
                     "replay_id": rec.replay_id.hex(), "correlation_id": rec.correlation_id}
            if rec.dead_letter:
                m.DEAD_LETTERS.labels(rec.reason).inc()
                log.warning("event dead-lettered: %s", rec.reason, extra=extra)
            else:
                log.info("event written", extra=extra)
        written = sum(1 for r in batch if not r.dead_letter)
        m.EVENTS_WRITTEN.inc(written)
        m.LAST_EVENT_TIME.set(time.time())

    def _maybe_commit_keepalive(self) -> None:
        candidate = self._keepalive_candidate
        if candidate is None:
            return
        if not self._needs_position() and time.monotonic() - self._last_keepalive_commit \
                < self.settings.keepalive_commit_interval_s:
            return  # throttled only once a resubscribe no longer falls back to the preset
        self._commit_keepalive(candidate)

    def _commit_keepalive(self, candidate: bytes) -> None:
        position = Position(candidate, KEEPALIVE, int(time.time() * 1000))
        value, headers = self.codec.position_value(position)
        try:
            self.writer.write([(self.kafka.connector_offsets, self.codec.key, value, headers)])
        except KafkaError:
            m.TRANSACTIONS.labels("keepalive", "abort").inc()
            raise
        m.TRANSACTIONS.labels("keepalive", "commit").inc()
        self.health.moved()
        self._last_keepalive_commit = time.monotonic()
        self._keepalive_candidate = None
        self._set_position(position)
        self.preset_override = None
        log.info("keepalive position committed", extra={"replay_id": candidate.hex()})

    def _set_position(self, position: Position | None) -> None:
        self.position = self.health.committed = position
        if position is not None:
            m.COMMITTED_AT.set(position.committed_at_ms / 1000)

    # -- failures ------------------------------------------------------------------------

    def _recover(self, exc: PipelineError) -> bool:
        """Decide the wait before resubscribing. False = give up (fatal)."""
        # the schema registry out of reach (a retryable SerdeError): neither Salesforce's
        # nor the broker's, named on /readyz as it is
        registry = isinstance(exc, SerdeError)
        cause = "producer_failed" if isinstance(exc, ProducerFailedError) else \
            m.SCHEMA_REGISTRY if registry else \
            getattr(exc, "cause", None) or type(exc).__name__
        m.RECONNECTS.labels(cause).inc()
        # what the first attempt met is the other checks' to judge: not ready at once while
        # no stream has been accepted yet (Health.unaccepted)
        self.health.started = True
        self.health.cause, self.health.last_error = cause, str(exc)
        self.health.failed(m.SCHEMA_REGISTRY if registry else
                           "kafka" if isinstance(exc, KafkaError) else "salesforce")
        if isinstance(exc, ProducerFailedError):
            self._reopen_pending = True  # a new producer before the next write (_reopen)
        elif isinstance(exc, KafkaError) and not exc.retryable:
            self.health.state = "failed"
            log.error("fatal Kafka error: %s", exc, extra={"cause": cause})
            return False
        if isinstance(exc, SalesforceAuthError):
            # the first at once (a token expired), then backing off (next() counts it)
            if self.backoff.attempt:
                delay = self.backoff.next()
            else:
                delay, self.backoff.attempt = 0.0, 1
            self._auth_failures += 1
            if self._auth_failures > 1 and self._auth_refreshed:
                # a fresh token refused again (the org, the user's access)
                self.health.auth_refused = str(exc)
            later = exc.status in RETRY_LATER  # the token endpoint said "later" itself
            delay = max(delay, exc.retry_after or 0.0)
            try:
                if later:  # asking it again at once would be refused the same way
                    raise exc
                self.pubsub.refresh_auth()
                self._auth_refreshed = True
            except SalesforceError as auth_exc:
                log.warning("re-authentication failed: %s", auth_exc, extra={"cause": cause})
                # the token endpoint unreachable (a timeout, a 5xx) is not a refusal: the
                # cached token, expired, is refused again meanwhile — not one either
                self._auth_refreshed = False
                if not auth_exc.retryable:  # invalid_grant, invalid_client, the key
                    self.health.auth_refused = str(auth_exc)
                delay = max(delay, self.backoff.ceiling(), auth_exc.retry_after or 0.0)
        elif isinstance(exc, SalesforceLimitError):
            delay = exc.retry_after or self.settings.limit_backoff_s
            self.health.state = "limited"
            # Salesforce answered "wait": the limit check reports it, and the stream after
            # the wait starts a count of its own (not one more error of an outage)
            self.health.moved()
        elif isinstance(exc, StreamStalled):
            delay = min(self.backoff.next(), 1.0)
        else:
            delay = self.backoff.next()
        if self.health.state != "limited":
            self.health.state = "backoff"
        self.health.waiting_until = time.monotonic() + delay
        extra = {"cause": cause, "error_code": getattr(exc, "error_code", None)}
        if cause == REFUSED:
            self.health.refused = str(exc)
            log.error("Salesforce refuses the subscription to %s: %s; check "
                      "SF_PROVISION_EVENT_CHANNEL and the integration user's access to the "
                      "event; retrying in %.1fs (not ready meanwhile)", self.settings.channel,
                      exc, delay, extra=extra)
        else:
            log.warning("subscription ended (%s): %s; resubscribing in %.1fs from %s", cause,
                        exc, delay, self._resume_point(), extra=extra)
        self._stop.wait(delay)
        return True

    def _resume_point(self) -> str:
        """Where the next subscription starts, for the logs."""
        if self._keepalive_candidate is not None and self._needs_position():
            return f"keepalive replay id {self._keepalive_candidate.hex()} (committed first)"
        if self.position is not None and self.preset_override is None:
            return self.position.replay_id.hex()
        return f"the preset {self.preset_override or self.settings.replay}"

    def _replay_invalid(self, exc: ReplayIdInvalidError) -> int | None:
        policy = self.settings.invalid_replay
        if self.position is None or self.preset_override is not None:
            # Not our stored id (we subscribed with a preset): treat as transient. _recover
            # counts the reconnect, once, with this cause (not the exception's class name)
            transient = SalesforceError(str(exc), error_code=exc.error_code, retryable=True)
            transient.cause = REPLAY_INVALID  # type: ignore[attr-defined]
            self._recover(transient)
            return None
        m.RECONNECTS.labels(REPLAY_INVALID).inc()
        extra = {"replay_id": self.position.replay_id.hex(), "error_code": exc.error_code}
        # how long before the refusal the stored id was last confirmed current: a keepalive
        # may carry the last event's id for as long as the channel stays quiet (Salesforce:
        # "can be the last event consumed"), so an id committed a minute ago is refused once
        # that event is older than the retention — a quiet weekend, not an outage
        confirmed_s = max(0.0, time.time() - self.position.committed_at_ms / 1000)
        quiet = self.position.source == KEEPALIVE and confirmed_s < PUBSUB_RETENTION_S
        cause = (f"a keepalive confirmed it current {_span(confirmed_s)} ago, so the channel "
                 "has had no event for longer than Salesforce keeps them: only what was "
                 f"published in those {_span(confirmed_s)} is unconfirmed" if quiet else
                 f"it was last committed {confirmed_s / 3600:.1f} h ago: what was published "
                 "since may be lost to Salesforce's retention")
        try:
            self._record_gap(policy, exc.error_code or "", f"{exc}; {cause}")
        except ProducerFencedError as fenced:
            return self._on_fenced(fenced)
        except KafkaAccessError as refused:
            return self._refused(refused)
        except KafkaError as kafka_exc:
            return None if self._recover(kafka_exc) else EXIT_ERROR
        if policy == "FAIL":
            self.health.state = "failed"
            log.error("stored replay id %s refused by Salesforce (%s); %s; gap recorded in "
                      "%s; SF_EVENTS_INVALID_REPLAY=FAIL, exiting. Set it to EARLIEST or "
                      "LATEST to resume, then reconcile the gap.",
                      self.position.replay_id.hex(), exc, cause, self.kafka.replay_gaps,
                      extra=extra)
            return EXIT_REPLAY_INVALID
        log.log(logging.WARNING if quiet else logging.ERROR,
                "stored replay id %s refused by Salesforce (%s); %s; gap recorded in %s, its "
                "Orders re-requested; resubscribing with %s", self.position.replay_id.hex(),
                exc, cause, self.kafka.replay_gaps, policy, extra=extra)
        self.preset_override, self._refused_position = policy, self.position
        self._opened = False  # this gap covers what the next stream skips
        return None

    def _latest_again(self) -> None:
        """A LATEST stream opened again before a position was committed: what was published
        since the last one opened (or since the gap that set the preset) was delivered by no
        stream, or delivered and not written, and is skipped now. Recorded as a gap, so its
        pass re-requests those Orders (and a restart re-arms it); the first LATEST stream
        of a fresh start records none, that is where LATEST starts."""
        self._record_gap("LATEST", "latest.resubscribed",
                         "resubscribed with LATEST with no position stored since a LATEST "
                         "stream was opened (before its first position was committed, or "
                         "after the position was reset): events published since the last "
                         "subscription are skipped")
        log.warning("resubscribed with LATEST with no position stored since a LATEST stream "
                    "was opened: what was published since the last subscription is skipped; "
                    "gap recorded in %s, its Orders are re-requested once the stream answers "
                    "and settles", self.kafka.replay_gaps, extra={"cause": "gap"})

    def _mark_latest_opened(self) -> None:
        """Commit the LATEST marker before the first LATEST stream opened with no position
        (in this instance's transaction: a fenced one cannot). A successor that finds it and
        still no position opens LATEST again: it records the gap (_found_latest_opened).
        Raises the write's KafkaError (no stream is opened without it)."""
        value, headers = self.codec.latest_opened_value(int(time.time() * 1000))
        try:
            self.writer.write([(self.kafka.connector_offsets, self.codec.latest_opened_key,
                                value, headers)])
        except KafkaError:
            m.TRANSACTIONS.labels("marker", "abort").inc()
            raise
        m.TRANSACTIONS.labels("marker", "commit").inc()
        self._latest_marked = True

    def _found_latest_opened(self, at_ms: int) -> None:
        """The LATEST marker is stored and no position: an earlier instance may have opened
        a LATEST stream (the marker precedes the open, which can still fail: the endpoint out
        of reach) and ended (killed, exited) before a position was committed, so what it
        received was written nowhere. The next LATEST stream is a re-open (_latest_again):
        a gap is recorded and its pass armed, as within one process. An EARLIEST one
        (SF_EVENTS_REPLAY changed since) records none: it replays what is retained."""
        self._opened = True
        opened = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at_ms / 1000))
        then = ("the LATEST stream opened now records a gap (its pass re-requests the Orders "
                "changed since)" if self.settings.replay == "LATEST" else
                f"SF_EVENTS_REPLAY={self.settings.replay}: the stream opened now replays the "
                "events still retained, no gap is recorded")
        log.warning("a LATEST stream may have been opened at %s with no position stored (the "
                    "marker %s in %s) and no position is stored now — a predecessor ended "
                    "before its first position, or the position was reset (a tombstone on "
                    "its key): what was published since may not have been written; %s", opened,
                    self.codec.latest_opened_key.decode(errors="replace"),
                    self.kafka.connector_offsets, then, extra={"cause": "gap"})

    def _record_gap(self, policy: str, error_code: str, message: str) -> None:
        """Commit a ``replay_gap`` record found now and plan its gap pass for the next
        stream's acceptance (:meth:`_arm_gap_pass`), as :meth:`_rearm_gap` plans a stored one:
        armed at once, a limit wait or a long backoff before that answer counted as the
        replay settling, and the pass re-requested Orders whose events Salesforce still
        replays. The later of two gaps bounds the pass. Raises the write's KafkaError."""
        at = time.time()
        value, headers = self.codec.gap_value(last_good=self.position, policy=policy,
                                              error_code=error_code, error_message=message,
                                              detected_at_ms=int(at * 1000))
        self.writer.write([(self.kafka.replay_gaps, self.codec.key, value, headers)])
        m.TRANSACTIONS.labels("gap", "commit").inc()
        m.REPLAY_GAPS.labels(policy).inc()
        if self.reconciler is not None:
            self._rearm_at = max(self._rearm_at or at, at)

    def _rearm_gap(self) -> None:
        """Plan a gap pass for the last gap recorded within ``GAP_REARM_S``: the instance
        that recorded it may have stopped before its pass ran (the pass waits for the replay
        to settle), and the position it committed since lets this one resume without
        meeting the gap again. A pass that finds nothing stranded re-requests nothing."""
        if self.reconciler is None:
            return
        try:
            gap = load_last_gap(KafkaConnection.from_settings(self.kafka),
                                self.kafka.replay_gaps, self.codec, timeout_s=30.0)
        except KafkaError as exc:
            log.warning("cannot read %s (%s): a replay gap recorded before this start is not "
                        "passed again; `sfprov reconcile` finds its Orders",
                        self.kafka.replay_gaps, exc)
            return
        if gap is None:
            return
        detected_s = epoch_ms(gap["detected_at"]) / 1000
        age_s = time.time() - detected_s
        if age_s > GAP_REARM_S:
            return
        log.warning("a replay gap was recorded %.0f s ago (%s, stored replay id %s): its "
                    "Orders are re-requested once the stream's replay settles", age_s,
                    gap["error_code"] or "replay id refused",
                    gap["last_good_replay_id"].hex() if gap["last_good_replay_id"] else "none",
                    extra={"cause": "gap"})
        # the pass's bound: a LATEST stream after the gap started where Salesforce accepted
        # it, later than the gap's detection, and no stream delivered what was published in
        # between (_arm_gap_pass). That acceptance is not in the gap record, but a position
        # committed after the detection came from that stream or a later one, so its commit
        # follows the acceptance: it bounds the pass — up to LATEST_ACCEPT_WITHIN_S after
        # the detection (the predecessor's last commit may be days later: a pass to there
        # would re-request at every restart what was dead-lettered since, at once)
        bound = detected_s
        if gap.get("policy") == "LATEST" and self.position is not None:
            committed_s = self.position.committed_at_ms / 1000
            bound = max(detected_s, min(committed_s, detected_s + LATEST_ACCEPT_WITHIN_S))
        self._rearm_at = bound  # armed once the stream answers or stays open (_arm_gap_pass)

    def _owner_record(self) -> Record:
        """The owner record, committed after each init_transactions (the writer's ``owner``):
        this instance claimed the stream, now. The position stays where it is."""
        value, headers = self.codec.owner_value(INSTANCE, int(time.time() * 1000))
        return (self.kafka.connector_offsets, self.codec.owner_key, value, headers)

    def _on_fenced(self, exc: ProducerFencedError) -> int | None:
        """Exit code for a fence, or None: it may be our own transaction timeout, re-init."""
        delay = self.backoff.next()
        if not isinstance(exc, TransactionTimedOutError):
            if not self._still_owner(exc, delay):
                return self._fenced(exc)
            delay = 0.0  # the backoff is over: waited before the owner record was read
        self._reopen_pending = True
        self._backing_off("txn_timeout", exc, delay)
        log.error("transaction timed out: %s. Its records are aborted (invisible to "
                  "read_committed readers); in %.1fs a new producer's init_transactions "
                  "takes the stream back and the connector resumes from the committed "
                  "position", exc, delay, extra={"cause": "txn_timeout"})
        self._stop.wait(delay)
        return None

    def _backing_off(self, cause: str, exc: Exception, delay: float) -> None:
        """A transaction timed out or a producer failed: counted, and named on /readyz as
        the loop's Kafka failures are (state, cause, error, the wait) until a new producer
        has taken the stream back."""
        m.RECONNECTS.labels(cause).inc()
        if cause == "txn_timeout":
            m.TXN_TIMEOUTS.inc()
        self.health.state, self.health.cause, self.health.last_error = \
            "backoff", cause, str(exc)
        self.health.failed("kafka")
        self.health.waiting_until = time.monotonic() + delay

    def _still_owner(self, exc: ProducerFencedError, delay: float) -> bool:
        """A fence of a transaction younger than its timeout: a newer instance's, unless the
        last owner record is still this instance's (:func:`connectors.offsets.still_owner`).
        Read after the backoff ``delay``: a newer instance commits its owner record right
        after the init that fenced us, moments ago. A stop asked meanwhile: a newer
        instance's fence."""
        self.health.state, self.health.cause, self.health.last_error = \
            "backoff", "fenced", str(exc)
        self.health.waiting_until = time.monotonic() + delay
        if self._stop.wait(delay):
            return False
        return still_owner(KafkaConnection.from_settings(self.kafka),
                           self.kafka.connector_offsets, self.codec, INSTANCE)

    def _start_writer(self) -> bool:
        """``init_transactions`` and the owner record. The owner record's transaction timed
        out (the process paused or the coordinator away past its timeout: the broker aborted
        it) or failed the producer: after the backoff a new producer, as the loop does after
        a transaction timeout — exit 3 there blamed a newer instance that did not exist, and
        supervisors do not restart it. A young fence still raises (a newer instance's init
        came in between: exit 3). False: a stop was asked meanwhile."""
        start = self.writer.start
        while True:
            try:
                start()
                if self.health.started:  # after a failed attempt: a clean start again
                    self.health = Health()
                return True
            except (TransactionTimedOutError, ProducerFailedError) as exc:
                cause = "txn_timeout" if isinstance(exc, TransactionTimedOutError) \
                    else "producer_failed"
                delay = self.backoff.next()
                self.health.started = True
                self._backing_off(cause, exc, delay)
                log.error("starting: init_transactions or the owner record's transaction "
                          "failed (%s); a new producer in %.1fs", exc, delay,
                          extra={"cause": cause})
                if self._stop.wait(delay):
                    return False
                # starting again: the new producer's init and owner record may take
                # minutes with the brokers cut, and a backoff long over read as a wedged
                # loop on /livez (a start is always live)
                self.health.state = "starting"
                start = self.writer.reopen

    def _reopen(self) -> None:
        """New producer (fencing any newer instance; its owner record committed), then the
        position: in that order."""
        self.health.resubscribing()
        self.writer.reopen()
        before = self.position
        self._set_position(load_position(self.kafka,
                                         self.kafka.connector_offsets, self.codec))
        self._reopen_pending = False
        if self.position != before:
            # a newer instance committed meanwhile: a keepalive of ours may lie behind its
            # position, and resuming after it would write events a second time
            self._keepalive_candidate = None
        if self.preset_override is not None and self.position is not None \
                and self.position != self._refused_position:
            # a newer instance met the gap too and committed past it (while this one was
            # paused): resume after its position, not with the preset again — EARLIEST would
            # write every retained event a second time, LATEST skip what came after it
            log.warning("a position was committed past the replay gap meanwhile: resuming "
                        "after it instead of with %s", self.preset_override,
                        extra={"replay_id": self.position.replay_id.hex()})
            self.preset_override = self._refused_position = None
        replay_id = self.position.replay_id.hex() if self.position else None
        log.warning("producer re-initialised (after a transaction timeout or a failed "
                    "producer); resuming after replay id %s", replay_id or "-",
                    extra={"replay_id": replay_id})

    def _config_refused(self, exc: ConfigError) -> int:
        """A setting the broker refuses (CONNECTOR_TRANSACTION_TIMEOUT_S), at the start or a
        new producer's: no retry or restart helps (taken for a failed subscription, it was
        retried for ever, blamed on Salesforce)."""
        self.health.state, self.health.last_error = "failed", str(exc)
        log.error("configuration error: %s", exc)
        return EXIT_CONFIG

    def _refused(self, exc: KafkaAccessError) -> int:
        self.health.state = "failed"
        self.health.last_error = str(exc)
        log.error("%s", exc)
        return EXIT_ACCESS_REFUSED

    def _fenced(self, exc: ProducerFencedError) -> int:
        self.health.state = "fenced"
        self.health.last_error = str(exc)
        log.error("FENCED: connector %r: %s. This instance stops writing and exits "
                  "(exit code %d); the newer instance owns the stream.", self.settings.name,
                  exc, EXIT_FENCED)
        return EXIT_FENCED


def _span(seconds: float) -> str:
    """``seconds`` for a log line: "42 s", "20 min", "3.5 h"."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
