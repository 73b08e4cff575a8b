"""Kafka helpers: the project's topics declared in one place, and their creation.

:func:`declared_topics` is the single source of truth for names, partitions and configs;
:func:`ensure_topics` creates what is missing and reports configs that drifted (it never
changes an existing topic behind the operator's back). Also the admin client, connecting
with refusals named (:func:`connect`), and retries in running time (:func:`retry_until`)
that a SIGTERM/SIGINT ends (:class:`Stopped`).
A consumer group's description, asked in a child process, is :mod:`common.group_describe`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from common.backoff import Backoff
from common.connection import (
    _SIGNS,
    KafkaConnection,
    access_error,
    closed_in_handshake,
    is_refusal,
    refusal_message,
)
from common.errors import ConfigError, KafkaAccessError, KafkaError
from common.settings import KafkaSettings

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    replication_factor: int
    config: dict[str, str] = field(default_factory=dict)
    purpose: str = ""
    # the topic whose partition count this one must have (a worker changelog: the
    # requests'), taken from the cluster when that topic exists (:func:`ensure_topics`)
    partitioned_as: str = ""


#: the requests topic's segments roll daily: Kafka deletes a whole segment once its newest
#: record is past ``retention.ms``, so with the broker's weekly roll (``log.roll.hours``)
#: the oldest events outlived the retention by up to a week — 37 days by default, past the
#: worker's 35-day dedupe memory (:func:`dedupe_outlived`)
REQUESTS_SEGMENT_MS = 24 * 3600 * 1000
_DAY_MS = 24 * 3600 * 1000


def dedupe_outlived(requests_retention_ms: int, dedupe_ttl_days: float, *,
                    source: str = "KAFKA_REQUESTS_RETENTION_MS",
                    segment_ms: int = REQUESTS_SEGMENT_MS) -> str:
    """``""`` when the requests topic deletes every event before the worker forgets its
    IdemKey (retention, a daily segment and an hour for the broker's retention check, at most
    ``WORKER_DEDUPE_TTL_DAYS``); else the warning line: an event replayed after its IdemKey
    was forgotten is decided again, and may get a second outcome record. ``source``: where
    the retention was read (the setting, or the topic's own ``retention.ms`` when it has
    another: :meth:`EnsureReport.retention_ms`); ``segment_ms``: the topic's own
    ``segment.ms`` when it has another than the declared day (a topic made before daily
    segments rolls weekly: its events live up to a week longer)."""
    ttl_ms = round(dedupe_ttl_days * _DAY_MS)  # 1.4 days is 120960000 ms, not a hair less
    longest = requests_retention_ms + segment_ms + 3_600_000
    if requests_retention_ms != -1 and longest <= ttl_ms:
        return ""
    kept = ("for ever (-1)" if requests_retention_ms == -1
            else f"up to {math.ceil(longest / _DAY_MS * 10) / 10:.1f} days (retention, "
                 f"its {'daily' if segment_ms == REQUESTS_SEGMENT_MS else 'last'} segment "
                 "and an hour for the broker's retention check)")
    fix = (f"Set a finite retention ({source}), and WORKER_DEDUPE_TTL_DAYS over it "
           "by a day and more, to avoid it" if requests_retention_ms == -1
           else f"Set WORKER_DEDUPE_TTL_DAYS to at least "
                f"{math.ceil(longest / _DAY_MS * 10) / 10:.1f} to avoid it")
    return (f"WORKER_DEDUPE_TTL_DAYS={dedupe_ttl_days:g} is shorter than the requests topic "
            f"keeps events ({source}: {kept}): an event replayed after "
            "the worker forgot its IdemKey is decided again and may get a second outcome "
            "record (such as Skipped ALREADY_PROVISIONED beside its first; never a second "
            f"WHMCS order). {fix}")


def declared_topics(settings: KafkaSettings) -> list[TopicSpec]:
    rf = settings.replication_factor
    isr = str(settings.min_insync_replicas)
    long_keep = str(settings.outcomes_retention_ms)
    return [
        TopicSpec(settings.requests, settings.partitions, rf,
                  {"cleanup.policy": "delete",
                   "retention.ms": str(settings.requests_retention_ms),
                   "retention.bytes": "-1",
                   "segment.ms": str(REQUESTS_SEGMENT_MS),
                   "min.insync.replicas": isr},
                  "platform events from Salesforce, key OrderId__c"),
        TopicSpec(settings.outcomes, settings.partitions, rf,
                  {"cleanup.policy": "delete", "retention.ms": long_keep,
                   "retention.bytes": "-1", "min.insync.replicas": isr},
                  "provisioning outcomes, key order id"),
        TopicSpec(settings.dead_letters, 3, rf,
                  {"cleanup.policy": "delete", "retention.ms": long_keep,
                   "retention.bytes": "-1", "min.insync.replicas": isr},
                  "records no stage could process, reason in headers"),
        TopicSpec(settings.connector_offsets, 1, rf,
                  {"cleanup.policy": "compact", "retention.ms": "-1",
                   "min.insync.replicas": isr, "min.compaction.lag.ms": "0",
                   "segment.ms": str(24 * 3600 * 1000)},
                  "connector replay positions (compacted)"),
        TopicSpec(settings.replay_gaps, 1, rf,
                  {"cleanup.policy": "delete", "retention.ms": "-1",
                   "retention.bytes": "-1", "min.insync.replicas": isr},
                  "replay-id gaps the connector recorded"),
    ]


WORKER_TABLES = ("idem", "intents")  # the worker's faust tables (streams.app)


CHANGELOG_DELETE_RETENTION_MS = 86_400_000  # Kafka's default, declared: drift if changed


def changelog_topics(settings: KafkaSettings, app_id: str) -> list[TopicSpec]:
    """The worker's table changelogs, as faust names them (``<app id>-<table>-changelog``,
    the app id with the topic prefix), declared here so the worker creates them before it
    joins its group: faust's assignor ignores a changelog its metadata does not show yet (a
    forming cluster), and faust would create them without ``min.insync.replicas`` — the
    cluster's default, often 1, under the intents that keep WHMCS writes at most once.

    Partitioned as the requests topic (a table's partition P holds the Orders whose events
    are on requests partition P): ``KAFKA_PARTITIONS`` here, the requests topic's own count
    when it exists (:func:`ensure_topics`)."""
    return [TopicSpec(f"{app_id}-{table}-changelog", settings.partitions,
                      settings.replication_factor,
                      {"cleanup.policy": "compact",
                       "min.insync.replicas": str(settings.min_insync_replicas),
                       # how long a tombstone outlives its cleaning: a worker's local store
                       # left behind longer (half of it) is rebuilt from the changelog's
                       # start (streams.faust_seam.restore.STALE_STORE_S)
                       "delete.retention.ms": str(CHANGELOG_DELETE_RETENTION_MS)},
                      f"worker table {table} (faust changelog, compacted)",
                      partitioned_as=settings.requests)
            for table in WORKER_TABLES]


class PartitionMismatch(ConfigError):
    """The requests topic's partition count is not ``KAFKA_PARTITIONS``, or a topic that
    must be partitioned as it (a worker changelog) has another count (:func:`ensure_topics`
    with ``refuse_partition_mismatch``)."""


def _partition_count(metadata: Any, name: str) -> int | None:
    """The partitions of ``name`` in the cluster's metadata; None when it is not there."""
    topic = metadata.topics.get(name)
    return len(topic.partitions) if topic is not None and topic.partitions else None


def partition_mismatch(settings: KafkaSettings, specs: Iterable[TopicSpec],
                       metadata: Any) -> str | None:
    """One line naming what the worker cannot run with, or None: the requests topic, one
    of ``specs``, exists with another partition count than ``KAFKA_PARTITIONS`` (the worker
    works out an Order's partition from the setting, the connector's producer from the
    topic), or a topic of ``specs`` partitioned as another
    (:attr:`TopicSpec.partitioned_as`) exists with another count than that one."""
    specs = list(specs)
    requests = _partition_count(metadata, settings.requests)
    if (requests is not None and requests != settings.partitions
            and any(s.name == settings.requests for s in specs)):
        return (f"the requests topic {settings.requests} has {requests} partitions, "
                f"KAFKA_PARTITIONS is {settings.partitions}: set KAFKA_PARTITIONS={requests} "
                "(the worker partitions its tables and finds each Order's partition with it)")
    for spec in specs:
        if not spec.partitioned_as:
            continue
        have = _partition_count(metadata, spec.name)
        want = _partition_count(metadata, spec.partitioned_as)
        if have is not None and want is not None and have != want:
            return (f"{spec.name} has {have} partitions, {spec.partitioned_as} has {want}: "
                    f"they must be partitioned alike ({spec.partitioned_as} grown after "
                    f"{spec.name} was made is not supported without a drain: README, "
                    "Topics and schemas)")
        anchor = next((s for s in specs if s.name == spec.partitioned_as), None)
        if have is not None and want is None and anchor is not None and \
                have != anchor.partitions:
            # the anchor is missing (a renamed requests topic, a deleted one): it would be
            # made with its declared count, and the existing topic would not match it
            return (f"{spec.name} has {have} partitions, {spec.partitioned_as} does not exist "
                    f"and would be made with {anchor.partitions} (KAFKA_PARTITIONS): set "
                    f"KAFKA_PARTITIONS={have}, or delete {spec.name} (a new worker state)")
    return None


def admin_client(settings: KafkaSettings | KafkaConnection, **extra: Any) -> AdminClient:
    conn = (settings if isinstance(settings, KafkaConnection)
            else KafkaConnection.from_settings(settings))
    return AdminClient(conn.librdkafka(**extra))


_ACCESS_SIGNS = tuple(sign for signs, *_ in _SIGNS for sign in signs)


class _Reports:
    """librdkafka's error callback and logger in one: keeps what it says (for
    :func:`~common.connection.access_error`) instead of printing it to stderr.

    The most recent 200 lines, and apart the last 50 that read like a refusal: a broker
    down at start-up says "Connection refused" hundreds of times before the one line that
    names the wrong password, and that line must not be crowded out (EXIT_CONFIG, not a
    restart loop)."""

    def __init__(self) -> None:
        self._recent: deque[str] = deque(maxlen=200)
        self._refusals: deque[str] = deque(maxlen=50)

    @property
    def lines(self) -> list[str]:
        """What was kept, oldest first: the refusal-like lines, then the recent ones."""
        return [*self._refusals, *self._recent]

    def error(self, err: Any) -> None:
        self._keep(err.str())

    def log(self, _level: int, fmt: str, *args: Any) -> None:
        self._keep(fmt % args if args else fmt)

    def _keep(self, line: str) -> None:
        self._recent.append(line)
        lowered = line.lower()
        if any(sign in lowered for sign in _ACCESS_SIGNS):
            self._refusals.append(line)


PAUSE_SLACK_S = 1.0  # an attempt this much later than its timeout: the process was stopped
STOP_CHECK_S = 0.2  # a wait between attempts looks at the stop this often
_stop_asked = threading.Event()


class Stopped(BaseException):  # noqa: N818 - a request, as KeyboardInterrupt is, not an error
    """The process was asked to stop (:func:`stop_waits`) while its main thread waited for
    the brokers (:class:`RunningDeadline`): raised instead of another attempt, and turned
    into exit 0 by each process's main. A BaseException, as KeyboardInterrupt is: an
    ``except Exception`` on the way must not make a stop a failure."""


def stop_waits(stop: bool = True) -> None:
    """From now on (``stop``) the main thread's waits for the brokers end within one
    attempt with :class:`Stopped`: :class:`common.process.Startup` asks it on SIGTERM/SIGINT.
    Without it, a start-up held the signal while it retried an absent broker for 30–60 s,
    past the supervisor's grace (SIGKILL, exit 1 under compose/Kubernetes). ``False``:
    wait again (a new :class:`~common.process.Startup`). Other threads' waits are not
    ended: their owners stop them."""
    if stop:
        _stop_asked.set()
    else:
        _stop_asked.clear()


def check_stop() -> None:
    """Raise :class:`Stopped` on the main thread once a stop was asked (:func:`stop_waits`):
    for a retry loop's check between attempts."""
    if _stop_asked.is_set() and threading.current_thread() is threading.main_thread():
        raise Stopped


def _sleep_or_stop(seconds: float) -> None:
    """``time.sleep(seconds)`` that raises :class:`Stopped` within :data:`STOP_CHECK_S` of a
    stop asked (:func:`stop_waits`) on the main thread."""
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        check_stop()
        time.sleep(min(left, STOP_CHECK_S))
    check_stop()


class RunningDeadline:
    """A deadline in this process's running time, for calls retried until it passes.

    Time the process spent stopped (SIGSTOP, a frozen VM, a long GC) does not count: an
    attempt that came back more than :data:`PAUSE_SLACK_S` later than its own timeout was
    stopped, and the deadline moves by the excess — else a process paused while it waits
    for the broker gives up at once on resuming, before its client could reconnect. So does
    a wait between attempts that lasted that much longer than asked (:meth:`sleep`).

    Once the process is asked to stop (:func:`stop_waits`), a failed attempt and a wait
    between attempts raise :class:`Stopped` on the main thread instead of trying again; an
    attempt that succeeds is not affected. ::

        deadline = RunningDeadline(30.0)
        while True:
            wait = deadline.attempt(0.5, 2.0)   # this attempt's timeout
            try: return call(wait)
            except Retriable:
                if deadline.failed(): raise
    """

    def __init__(self, timeout_s: float) -> None:
        self.at = time.monotonic() + timeout_s
        self._started = self._wait = 0.0

    def attempt(self, shortest_s: float, longest_s: float) -> float:
        """The timeout of the attempt that starts now: what is left, within the bounds."""
        self._started = time.monotonic()
        self._wait = max(shortest_s, min(longest_s, self.at - self._started))
        return self._wait

    def failed(self) -> bool:
        """The attempt failed: move the deadline by the time it was stopped; True when the
        deadline has passed (give up). Raises :class:`Stopped` when the process is asked to
        stop: no more attempts."""
        check_stop()
        now = time.monotonic()
        stopped = now - self._started - self._wait - PAUSE_SLACK_S
        if stopped > 0:
            self.at += stopped
        return now >= self.at

    def sleep(self, seconds: float) -> None:
        """``time.sleep(seconds)`` between attempts; a sleep that ended more than
        :data:`PAUSE_SLACK_S` late was stopped, and the deadline moves by the excess. A stop
        asked meanwhile raises :class:`Stopped` within :data:`STOP_CHECK_S`."""
        started = time.monotonic()
        _sleep_or_stop(seconds)
        stopped = time.monotonic() - started - seconds - PAUSE_SLACK_S
        if stopped > 0:
            self.at += stopped


def retry_until(deadline: RunningDeadline, call: Callable[[float], T], *, doing: str,
                failure: str, refused: Callable[[Any], str],
                give_up: Callable[[KafkaException], bool] = lambda exc: False) -> T:
    """``call(timeout)`` — one request to the brokers, in attempts of 1–10 s — until it
    answers or ``deadline`` has passed, with a backoff between attempts (an answer that
    fails at once must not be asked in a loop). Each failure is logged as ``<doing>:
    <error>; trying again``. A refusal of the principal raises :class:`KafkaAccessError`
    with ``refused(error)`` at once; a failure ``give_up`` names, or the last one, raises a
    retryable KafkaError ``<failure>: <error>``. A stop asked (:func:`stop_waits`) raises
    :class:`Stopped` after the attempt under way."""
    backoff = Backoff(0.5, 4.0)
    while True:
        try:
            return call(deadline.attempt(1.0, 10.0))
        except KafkaException as exc:
            if exc.args and is_refusal(exc.args[0]):
                raise KafkaAccessError(refused(exc.args[0])) from None
            if give_up(exc) or deadline.failed():
                raise KafkaError(f"{failure}: {exc}", retryable=True) from exc
            log.warning("%s: %s; trying again", doing, exc)
            deadline.sleep(backoff.next_delay())


def connect(conn: KafkaConnection, *, timeout: float = 30.0) -> tuple[AdminClient, Any]:
    """An admin client and the cluster's metadata, once the broker answers.

    A refusal — wrong SASL credentials, a certificate the CA cannot verify, a mechanism
    the broker does not offer, a protocol its listener does not speak — raises
    :class:`KafkaAccessError` with one line naming the setting, as soon as it is certain;
    a broker that does not answer within ``timeout`` raises a retryable KafkaError.

    ``timeout`` is this process's running time (:class:`RunningDeadline`): a process paused
    while starting must not give up at once on resuming (a chaos run saw the worker exit so)."""
    reports = _Reports()
    admin = AdminClient(conn.librdkafka(error_cb=reports.error, logger=reports))
    deadline = RunningDeadline(timeout)
    while True:
        wait = deadline.attempt(0.5, 2.0)
        try:
            return admin, admin.list_topics(timeout=wait)
        except KafkaException as exc:
            admin.poll(0)
            final = deadline.failed()
            line = access_error(conn, reports.lines, final=final)
            if line:
                raise KafkaAccessError(line) from None
            if final:
                hint = ("; every connection was closed before the broker's first answer, "
                        "and nothing answers in another protocol: brokers down behind a load "
                        "balancer or proxy?" if closed_in_handshake(reports.lines) else "")
                raise KafkaError(f"cannot reach Kafka at {conn.bootstrap_servers}: {exc}"
                                 f"{hint}", retryable=True) from exc


@dataclass
class EnsureReport:
    created: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)
    drift: list[str] = field(default_factory=list)  # human-readable lines
    #: an existing topic's declared config keys as the brokers have them (None: not set)
    configs: dict[str, dict[str, str | None]] = field(default_factory=dict)
    #: each topic's partition count as the cluster has it (a ``partitioned_as`` one's may
    #: not be the declared one)
    partitions: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.drift

    def retention_ms(self, topic: str, declared: int) -> int:
        """``topic``'s ``retention.ms`` as the brokers have it; ``declared`` for a topic
        created now, or without a number there."""
        return self.number(topic, "retention.ms", declared)

    def number(self, topic: str, key: str, declared: int) -> int:
        """``topic``'s config ``key`` as the brokers have it; ``declared`` for a topic
        created now, or without a number there."""
        have = self.configs.get(topic, {}).get(key)
        return int(have) if have is not None and have.lstrip("-").isdigit() else declared

    @property
    def unsafe(self) -> list[str]:
        """The drift lines that break a guarantee (:data:`UNSAFE`): not to be started on."""
        return [line for line in self.drift if UNSAFE in line]


CREATE_ATTEMPTS = 4
# A cluster still forming answers a CreateTopics with these: a bootstrap connection replaced
# by the learned brokers (_DESTROY_BROKER), no controller yet, a node not yet up.
_TRANSIENT = {"_DESTROY_BROKER", "_TRANSPORT", "_TIMED_OUT", "_ALL_BROKERS_DOWN",
              "NOT_CONTROLLER", "REQUEST_TIMED_OUT", "INVALID_REPLICATION_FACTOR"}


def _transient(exc: KafkaException) -> bool:
    err = exc.args[0] if exc.args else None
    return err is not None and (err.retriable() or err.name() in _TRANSIENT)


def is_transient(exc: BaseException) -> bool:
    """``exc`` is a Kafka client error that passes by itself (a timeout, a broker failing
    over or out of reach): worth a warning and another try, not a traceback."""
    return isinstance(exc, KafkaException) and _transient(exc)


def ensure_topics(settings: KafkaSettings, *, timeout: float = 30.0,
                  admin: AdminClient | None = None,
                  only: Iterable[str] | None = None,
                  extra: Iterable[TopicSpec] = (),
                  refuse_partition_mismatch: bool = False) -> EnsureReport:
    """Create missing topics; report partition/replication/config drift of existing ones
    (see :func:`describe_drift`). Idempotent. Returns once every topic it names is in the
    cluster's metadata with a leader for each partition (a forming cluster learns of a new
    topic a moment after creating it); one that another client created between the metadata
    read and the create is waited for too, and checked for drift.

    ``only``: the names a process uses (its principal may not see the others); ``extra``:
    topics declared elsewhere (:func:`changelog_topics`), always included. A topic declared
    ``partitioned_as`` another that exists is created with that one's partition count.
    ``refuse_partition_mismatch`` (the worker): a :func:`partition_mismatch` raises
    :class:`PartitionMismatch` before anything is created, and again once the topics others
    are partitioned as exist (made here or by a racing client), before the others are
    made. A broker that refuses this
    client, or its principal to create a missing topic or read a topic's config, raises
    :class:`KafkaAccessError` (see :func:`connect`)."""
    conn = KafkaConnection.from_settings(settings)
    if admin is None:
        admin, metadata = connect(conn, timeout=timeout)
    else:
        try:
            metadata = admin.list_topics(timeout=timeout)
        except KafkaException as exc:
            raise KafkaError(f"cannot reach Kafka at {settings.bootstrap_servers}: {exc}",
                             retryable=True) from exc
    wanted = set(only) if only is not None else None
    specs: list[TopicSpec] = []
    for spec in declared_topics(settings):  # two settings may name one topic: once
        if (wanted is None or spec.name in wanted) and spec.name not in {s.name for s in specs}:
            specs.append(spec)
    specs.extend(s for s in extra if s.name not in {x.name for x in specs})
    if refuse_partition_mismatch and (line := partition_mismatch(settings, specs, metadata)):
        raise PartitionMismatch(line)
    report = EnsureReport()
    # ``raced``: missing a moment ago, yet "already exists" — another process (the connector,
    # worker and sink start together), the broker's auto-creation or a create retried after
    # a timeout made it. As new as one made here: waited for, and checked like any existing.
    # The topics others are partitioned as go first, and the check runs again on what they
    # became: one raced with another count (a connector with another KAFKA_PARTITIONS, the
    # broker's auto-creation) must not get the changelogs made beside it.
    anchors = {s.partitioned_as for s in specs if s.partitioned_as}
    raced: list[str] = []
    for first, wave in ((True, [s for s in specs if s.name in anchors]),
                        (False, [s for s in specs if s.name not in anchors])):
        if not first and refuse_partition_mismatch and \
                (line := partition_mismatch(settings, specs, metadata)):
            raise PartitionMismatch(line)
        wave = [replace(s, partitions=count) if s.partitioned_as and
                (count := _partition_count(metadata, s.partitioned_as)) is not None else s
                for s in wave]
        made, met = create_topics(admin, [s for s in wave if s.name not in metadata.topics],
                                  timeout=timeout, conn=conn)
        report.created.extend(made)
        raced.extend(met)
        if made or met:
            metadata = _until_led(admin, [*made, *met], metadata, timeout)
    # a topic partitioned as another is declared with that one's count, as it was made
    present = [replace(s, partitions=count) if s.partitioned_as and
               (count := _partition_count(metadata, s.partitioned_as)) is not None else s
               for s in specs if s.name in metadata.topics and s.name not in report.created]
    report.partitions.update((s.name, len(metadata.topics[s.name].partitions))
                             for s in specs if s.name in metadata.topics)
    report.existing.extend(s.name for s in present)
    report.existing.extend(n for n in raced if n not in report.existing)  # not seen after wait
    # Retried for ``timeout`` of running time: a chaos run saw a sink start while the
    # controller's node was paused, and its one 30 s describe end the process.
    report.drift.extend(retry_until(
        RunningDeadline(timeout),
        lambda wait: describe_drift(admin, present, metadata, timeout=wait,
                                    actual=report.configs),
        doing="describing topic configs", failure="describing topic configs",
        refused=lambda err: refusal_message(conn, "describe the configs of its topics", err),
        give_up=lambda exc: not _transient(exc)))
    return report


def create_topics(admin: AdminClient, specs: list[TopicSpec], *, timeout: float = 30.0,
                  conn: KafkaConnection | None = None) -> tuple[list[str], list[str]]:
    """Create ``specs``; returns (created, already existing). A transient failure is tried
    again (``CREATE_ATTEMPTS``): a fresh client may fail its first request with
    ``_DESTROY_BROKER`` when it retires the bootstrap connection the request went out on,
    and a forming cluster answers ``NOT_CONTROLLER`` or ``INVALID_REPLICATION_FACTOR``
    until every node has registered. A refusal raises :class:`KafkaAccessError`."""
    created: list[str] = []
    existing: list[str] = []
    missing = list(specs)
    backoff = Backoff(0.5, 4.0)
    for attempt in range(1, CREATE_ATTEMPTS + 1):
        if not missing:
            break
        check_stop()  # a SIGTERM while a forming cluster refuses: exit 0, not 4 attempts
        futures = admin.create_topics(
            [NewTopic(s.name, num_partitions=s.partitions, replication_factor=s.replication_factor,
                      config=s.config) for s in missing],
            operation_timeout=timeout, request_timeout=timeout)
        again, by_name = [], {s.name: s for s in missing}
        for name, fut in futures.items():
            try:
                fut.result()
                created.append(name)
            except KafkaException as exc:
                if exc.args and exc.args[0].name() == "TOPIC_ALREADY_EXISTS":
                    existing.append(name)
                elif exc.args and is_refusal(exc.args[0]):
                    what = (f"use topic {name} (it is missing, or no ACL lets this principal "
                            "see it; topics are made by an admin: `make topics`)")
                    raise KafkaAccessError(refusal_message(conn, what, exc.args[0])
                                           if conn is not None else f"{what}: {exc}") from None
                elif attempt < CREATE_ATTEMPTS and _transient(exc):
                    log.warning("creating topic %s: %s; trying again", name, exc)
                    again.append(by_name[name])
                else:
                    raise KafkaError(f"creating topic {name}: {exc}") from exc
        missing = again
        if missing:
            _sleep_or_stop(backoff.next_delay())
    return created, existing


def _until_led(admin: AdminClient, names: list[str], metadata: Any, timeout: float) -> Any:
    """The metadata once every one of ``names`` has a leader for each partition (or the
    last seen after ``timeout``: the clients' own metadata refreshes cover the rest)."""
    deadline = time.monotonic() + timeout
    backoff = Backoff(0.05, 1.0)
    while True:
        with contextlib.suppress(KafkaException):  # a node away: the next round asks again
            metadata = admin.list_topics(timeout=max(0.5, min(5.0, deadline - time.monotonic())))
        led = all(n in metadata.topics and metadata.topics[n].error is None and
                  metadata.topics[n].partitions and
                  all(p.leader >= 0 for p in metadata.topics[n].partitions.values())
                  for n in names)
        if led or time.monotonic() >= deadline:
            return metadata
        _sleep_or_stop(backoff.next_delay())


#: marks a drift line that breaks a guarantee (:attr:`EnsureReport.unsafe`)
UNSAFE = " — unsafe: "
#: Salesforce keeps platform events 72 hours: a topic keeping them less cannot replay
#: what Salesforce has forgotten
SALESFORCE_RETENTION_MS = 72 * 3600 * 1000


def _unsafe(key: str, have: str | None, want: str) -> str:
    """Why a config drift breaks a guarantee, or ``""``: another cleanup policy (a
    compacted requests topic keeps one event per Order; a compacted dead-letter topic turns
    ``dlq requeue``'s markers into tombstones; offsets or changelogs not compacted lose
    their keys to retention), a retention under Salesforce's 72 hours where the declaration
    keeps longer (no replay from Kafka past Salesforce's own), a size limit where none is
    declared (records deleted by size, whatever their age: under a busy day's volume, before
    Salesforce's 72 hours), a changelog's ``delete.retention.ms`` under the declared one (a
    worker's store left behind for less than half the declared time is resumed from its
    offset, though tombstones were dropped meanwhile: an intent settled and forgotten comes
    back pending), or a ``min.insync.replicas`` under the declared one (an acknowledged
    write can be lost with its leader)."""
    if key == "cleanup.policy":
        return "its records are kept otherwise than the pipeline relies on"
    number = have.lstrip("-").isdigit() if have is not None else False
    if key == "retention.bytes" and want == "-1" and number and have != "-1":
        return "its records are deleted by size, whatever retention.ms says"
    if key == "delete.retention.ms" and number and want.isdigit() and int(have or 0) < int(want):
        return ("a worker store left behind longer than half of it keeps entries the "
                "changelog deleted meanwhile")
    if key == "retention.ms" and number and want.lstrip("-").isdigit():
        kept, declared = int(have or 0), int(want)
        if kept != -1 and kept < SALESFORCE_RETENTION_MS and (
                declared == -1 or declared >= SALESFORCE_RETENTION_MS):
            return "it keeps records for less than Salesforce's 72 hours"
    if key == "min.insync.replicas" and number and want.isdigit() and int(have or 0) < int(want):
        return "an acknowledged write can be lost with its leader"
    return ""


def describe_drift(admin: AdminClient, specs: list[TopicSpec], metadata: Any, *,
                   timeout: float = 30.0,
                   actual: dict[str, dict[str, str | None]] | None = None) -> list[str]:
    """Lines describing where existing topics differ from their declaration: partitions,
    replication factor (the smallest replica count of its partitions, or the largest if
    that is above the declared one), configs; and a ``min.insync.replicas`` in effect above
    the replicas the topic has (no acks=all write can succeed). A line whose drift breaks a
    guarantee holds :data:`UNSAFE` and why (:func:`_unsafe`; fewer replicas than declared,
    and a ``min.insync.replicas`` above the replicas, are unsafe too)."""
    lines: list[str] = []
    if not specs:
        return lines
    resources = [ConfigResource(ConfigResource.Type.TOPIC, s.name) for s in specs]
    configs = admin.describe_configs(resources, request_timeout=timeout)
    for spec, resource in zip(specs, resources, strict=True):
        partitions = metadata.topics[spec.name].partitions
        actual_partitions = len(partitions)
        if actual_partitions != spec.partitions:
            lines.append(f"{spec.name}: partitions {actual_partitions}, declared {spec.partitions}")
        counts = [len(p.replicas) for p in partitions.values()]
        fewest = min(counts, default=None)
        if fewest is not None and fewest < spec.replication_factor:
            lines.append(f"{spec.name}: replication factor {fewest}, declared "
                         f"{spec.replication_factor} (fewer replicas than declared){UNSAFE}"
                         "a broker's loss can lose its records")
        elif counts and max(counts) > spec.replication_factor:
            lines.append(f"{spec.name}: replication factor {max(counts)}, declared "
                         f"{spec.replication_factor} (more replicas than declared)")
        entries = configs[resource].result()
        if actual is not None:
            actual[spec.name] = {key: entries[key].value if key in entries else None
                                 for key in spec.config}
        for key, want in spec.config.items():
            have = entries[key].value if key in entries else None
            if have != want:
                why = _unsafe(key, have, want)
                lines.append(f"{spec.name}: {key}={have}, declared {want}"
                             + (f"{UNSAFE}{why}" if why else ""))
        isr = entries["min.insync.replicas"].value if "min.insync.replicas" in entries else None
        if fewest is not None and isr is not None and isr.isdigit() and int(isr) > fewest:
            lines.append(f"{spec.name}: min.insync.replicas={isr} exceeds its replication "
                         f"factor {fewest} (writes with acks=all cannot succeed){UNSAFE}"
                         "nothing can be written to it")
    return lines



#: Kafka's default bounds of a group member's session (the brokers'
#: group.min.session.timeout.ms and group.max.session.timeout.ms), in ms.
DEFAULT_SESSION_BOUNDS_MS = (6_000, 1_800_000)


def session_outside_defaults(session_ms: float, variable: str) -> str | None:
    """A warning when a group session of ``session_ms`` is outside Kafka's default bounds,
    else None. Brokers that keep their defaults refuse such a JoinGroup
    (``INVALID_SESSION_TIMEOUT``), and the worker never hears of it: aiokafka keeps the
    error for a ``getmany`` faust does not call before an assignment, so it idles without a
    word. Only a warning: brokers may be configured otherwise, and asking their configuration
    (DescribeConfigs) needs a cluster-wide ACL the worker is not given."""
    low, high = DEFAULT_SESSION_BOUNDS_MS
    if low <= session_ms <= high:
        return None
    return (f"{variable} {session_ms / 1000:g} s is outside Kafka's default bounds of a "
            f"group session ({low / 1000:g} s to {high / 60_000:g} min: the brokers' "
            "group.min.session.timeout.ms and group.max.session.timeout.ms); brokers that "
            "keep them refuse the group join, and the worker then waits without a word")
