"""Where the sink's group starts on an outcomes partition it holds no committed offset for.

The failure it closes: a sink group with no committed offsets on an outcomes topic that
holds history — a new ``SINK_GROUP_ID`` or ``KAFKA_TOPIC_PREFIX``, or a sink stopped longer
than the broker keeps an empty group's offsets (``offsets.retention.minutes``, 7 days by
default) — used to read from the earliest outcome kept (up to
``KAFKA_OUTCOMES_RETENTION_MS``, 365 days) and write every Order's outcomes again. The
outcome fence lets equal values pass (a redelivery must), so each rewrite set Salesforce
back over whatever it had held since (an Opportunity customer service had moved on from
``Active`` went back to ``Active``).

So at each assignment :func:`starts` asks the group's committed offsets of the partitions
it receives (one OffsetFetch) and, for a partition without one:

* that holds no record (a new topic, or everything expired): start at its end, and commit
  that start at once, so a sink killed before its first write does not find the partition
  without an offset, and full, the next time;
* that holds records: start where ``SINK_START_POSITION`` says — ``earliest``, ``latest``,
  or the first outcome at or after an ISO-8601 time (no later than the old group last had no
  lag: the outcomes before it are not written back) — and
  commit that start at once, the choice then made for good. Unset: from the first record
  when every record is younger than :data:`NEW_INSTALLATION_S` (one hour: a new
  installation whose sink joined after the worker's first outcomes); otherwise refuse with
  :class:`~common.errors.ConfigError` naming the partitions, the records they hold and the
  choices (the sink exits 64 before writing anything).

A partition with a committed offset starts there, as always: the setting is read only for
partitions without one. Pitfalls: the watermarks count records, not outcomes — aborted
transactions and their markers make a partition with no outcome look full, refused like
one when it is older than an hour; the age is the records' timestamps (the worker's
clock: CreateTime); ``latest`` and a time skip the outcomes before them for good (they stay in the topic:
``kafka-consumer-groups --reset-offsets`` moves the group back).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime
from typing import TypeVar

from confluent_kafka import OFFSET_INVALID, Consumer, TopicPartition

from common.connection import refusal_message
from common.envparse import EARLIEST, LATEST
from common.errors import ConfigError
from common.kafka import RunningDeadline, retry_until

T = TypeVar("T")

#: how long an assignment keeps asking a broker that does not answer (then the sink exits
#: 1 and is restarted: deciding without the committed offsets could rewrite history)
ASK_BUDGET_S = 60.0
#: a partition without a committed offset whose records are all younger than this is taken
#: from its first record without asking: a new installation whose sink joined after the
#: worker's first outcomes (or crashed before its first commit), not a topic's history
NEW_INSTALLATION_S = 3600.0
log = logging.getLogger(__name__)


def epoch_ms(position: str) -> int:
    """The epoch milliseconds of a time position (:func:`parse_start_position`'s form)."""
    return int(datetime.fromisoformat(position.replace("Z", "+00:00")).timestamp() * 1000)


class _Asker:
    """Each call to the brokers of one decision: retried (attempts of 1–10 s, a backoff
    between them) within one budget of this process's running time (a pause does not
    count), ``beat()`` before each attempt (the sink's /livez: the poll loop waits on this
    callback), :class:`~common.errors.KafkaAccessError` at once for a refusal, and
    :class:`~common.kafka.Stopped` when the process is asked to stop (SIGTERM)."""

    def __init__(self, group: str, budget_s: float, beat: Callable[[], None],
                 principal: str) -> None:
        self.group, self.beat, self.principal = group, beat, principal
        self.deadline = RunningDeadline(budget_s)

    def __call__(self, doing: str, call: Callable[[float], T]) -> T:
        def attempt(wait: float) -> T:
            self.beat()
            return call(wait)
        return retry_until(self.deadline, attempt, doing=doing,
                           failure=f"cannot {doing} (group {self.group})",
                           refused=lambda err: refusal_message(
                               self.principal, f"{doing} (group {self.group})", err))


def starts(consumer: Consumer, topic: str, partitions: list[int], *, group: str,
           position: str, budget_s: float = ASK_BUDGET_S,
           beat: Callable[[], None] = lambda: None,
           principal: str = "the sink's principal") -> dict[int, int]:
    """Per partition of ``partitions`` that ``group`` has no committed offset for, the
    offset to start at — committed before returning; partitions with a committed offset
    are not in the answer (they start there). Raises :class:`ConfigError` when such a
    partition holds records older than :data:`NEW_INSTALLATION_S` and ``position`` is
    blank; a retryable :class:`~common.errors.KafkaError` when the brokers do not answer
    within ``budget_s`` of running time, :class:`~common.errors.KafkaAccessError` when they
    refuse, :class:`~common.kafka.Stopped` on a stop asked meanwhile (nothing committed)."""
    if not partitions:
        return {}
    ask = _Asker(group, budget_s, beat, principal)
    asked = [TopicPartition(topic, p) for p in partitions]
    committed = ask(f"read the committed offsets of {topic}",
                    lambda wait: consumer.committed(asked, timeout=wait))
    unset = sorted(tp.partition for tp in committed if tp.offset == OFFSET_INVALID)
    if not unset:
        return {}
    marks = {p: ask(f"read the watermarks of {topic} [{p}]",
                    lambda wait, p=p: consumer.get_watermark_offsets(  # type: ignore[misc]
                        TopicPartition(topic, p), timeout=wait, cached=False))
             for p in unset}
    full = {p: m for p, m in marks.items() if m[1] > m[0]}
    chosen = {p: high for p, (_, high) in marks.items()}  # empty, or LATEST
    if full and not position:  # a new installation, or history: refused
        since = _at_ms(ask, consumer, topic, full, int((time.time() - NEW_INSTALLATION_S) * 1000))
        old = {p: m for p, m in full.items() if since[p] != m[0]}
        if old:
            raise ConfigError(refusal(group, topic, old))
        chosen.update({p: low for p, (low, _) in full.items()})
    elif full and position == EARLIEST:
        chosen.update({p: low for p, (low, _) in full.items()})
    elif full and position != LATEST:
        chosen.update(_at_ms(ask, consumer, topic, full, epoch_ms(position)))
    start = [TopicPartition(topic, p, o) for p, o in sorted(chosen.items())]
    ask(f"commit the group's start on {topic}",
        lambda _wait: consumer.commit(offsets=start, asynchronous=False))
    for p, offset in sorted(chosen.items()):
        low, high = marks[p]
        if p not in full:
            log.info("group %s starts on %s [%d] at %d (no committed offset; the "
                     "partition holds no record)", group, topic, p, offset)
        elif not position:
            log.info("group %s starts on %s [%d] at its first record, %d (no committed "
                     "offset; every record is less than %g h old: a new installation)",
                     group, topic, p, offset, NEW_INSTALLATION_S / 3600)
        else:
            log.warning("group %s had no committed offset on %s [%d] (offsets %d–%d): "
                        "starting at %d (SINK_START_POSITION=%s); %d outcome record(s) "
                        "before it are not written back", group, topic, p, low, high - 1,
                        offset, position, offset - low)
    return chosen


def _at_ms(ask: _Asker, consumer: Consumer, topic: str, full: dict[int, tuple[int, int]],
           ms: int) -> dict[int, int]:
    """Per partition, the first offset whose timestamp is at or after epoch ``ms`` (its
    end when none is)."""
    answer = ask(f"look up {topic}'s offsets at epoch ms {ms}",
                 lambda wait: consumer.offsets_for_times(
                     [TopicPartition(topic, p, ms) for p in sorted(full)], timeout=wait))
    found = {tp.partition: tp.offset for tp in answer}
    return {p: found[p] if found.get(p, -1) >= 0 else high for p, (_, high) in full.items()}


def refusal(group: str, topic: str, full: dict[int, tuple[int, int]]) -> str:
    """The one line of the exit 64 when partitions with history have no committed offset."""
    held = sum(high - low for low, high in full.values())
    where = ", ".join(f"[{p}] offsets {low}–{high - 1}" for p, (low, high) in sorted(full.items()))
    return (f"SINK_START_POSITION: group {group} has no committed offset on {topic} "
            f"{where} ({held} record(s)): written again, those outcomes would set Salesforce "
            "back over anything newer (a new SINK_GROUP_ID or KAFKA_TOPIC_PREFIX, or a sink "
            "stopped longer than the broker keeps an idle group's offsets). Set where this "
            "group starts: an ISO-8601 time such as 2026-12-01T09:30:00Z (the outcomes from "
            "then on: no later than the old group last had no lag, as a group stopped while "
            "behind never wrote its last outcomes), earliest (write them all: a new "
            "installation whose sink starts after its first outcomes) or latest (only "
            "outcomes from now on); it is read only for partitions without a committed "
            "offset")
