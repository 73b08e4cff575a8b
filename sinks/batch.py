"""Batching across outcomes, and the bookkeeping that decides which offsets may be committed.

Three structures, all pure (no Kafka, no HTTP), driven by :class:`sinks.app.Sink`:

* :class:`Batcher` — the pending map keyed by ``(sobject, id)``: per record, its pending
  updates in **version order** (the outcome's ``completed_at``; arrival order between equal
  versions). Two updates of a record merge into one entry only when that is the same as
  writing them one after the other whatever Salesforce holds meanwhile: the later one sets
  every field the earlier one sets (the merged entry is then just the later one), or their
  versions are equal. Otherwise they stay separate entries, sent one after the other in
  version order, each carrying its own version — so the fence (:mod:`sinks.fence`) judges
  each against what Salesforce holds. (Merging an older update's other fields under a newer
  one let them pass the fence with the newer version: an Opportunity shared by Orders of
  different partitions, whose newer outcome B was already written, got A's older service
  id back from a merge of A under C.) Only the first pending entry of a record is sendable,
  and a taken entry goes back in its place (``retry``), so an update never overtakes an
  older one of the same record, and one call never holds a record twice. Each entry
  remembers the outcomes it covers.
* :class:`Tracked` — one consumed outcome and the records it still waits for. It is
  complete when every record it touched was acknowledged by Salesforce or failed
  permanently (then it is dead-lettered with those errors).
* :class:`OffsetTracker` — per partition, the offsets consumed and not yet complete.

Commit order (the contract; the sink performs it in this order)::

    1. PATCH composite/sobjects; Salesforce answers per record
    2. acknowledged records → their outcomes lose that record; so do records the fence
       refused as superseded (Salesforce holds a newer outcome: nothing to write);
       permanent failures are noted on the outcome; transient failures go back to the
       pending map
    3. an outcome with nothing left is complete: if it carries errors it is produced to
       the dead-letter topic first
    4. producer.flush() — every dead letter is on the broker
    5. commit, per partition, the lowest offset still incomplete (or last seen + 1)

A crash anywhere before 5 redelivers the outcomes after the last commit; the updates are
absolute, so writing them again is harmless.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sinks.mapping import RecordKey, RecordUpdate


@dataclass(frozen=True)
class RecordError:
    """Salesforce's per-record error (``statusCode``/``message``/``fields``)."""

    key: RecordKey
    code: str
    message: str
    fields: tuple[str, ...] = ()


@dataclass(eq=False)
class Tracked:
    """One consumed outcome record, until every record it touches is settled."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    outcome: dict[str, Any] | None = None
    remaining: set[RecordKey] = field(default_factory=set)
    errors: list[RecordError] = field(default_factory=list)
    # the consumed record's headers (None: it had none): a dead letter of it carries
    # ``sfprov.requeued_from`` on, when ``sfprov dlq requeue`` sent it (sinks.deadletters)
    headers: Any = None
    # Salesforce stored at least one of its records (not only superseded, skipped or
    # failed): what the write-back lag is observed for
    written: bool = False

    @property
    def complete(self) -> bool:
        return not self.remaining


@dataclass(eq=False)
class Entry:
    """The pending update of one record (one or more merged) and the outcomes it covers."""

    key: RecordKey
    fields: dict[str, Any]
    sources: list[Tracked]
    since: float  # when the oldest update in it arrived (linger clock)
    attempts: int = 0  # failed attempts so far (transient errors)
    not_before: float = 0.0  # backoff: not sent before this time
    version: int | None = None  # newest version merged in (epoch ms of completed_at)
    #: retryable whole-call failures in a row of the calls it was in (see
    #: :mod:`sinks.probing`); after ``SHRINK_AFTER`` its ``cap`` halves
    call_failures: int = 0
    cap: int | None = None  # the most records a call with it may hold (None: the batch size)
    #: whole calls of this record alone (at cap 1) that failed retryably; once one has, it
    #: is only ever sent alone
    lone_failures: int = 0
    answered_mark: int = -1  # the sink's count of answered calls at its last lone failure
    failed_mark: int = -1  # the sink's count of failed calls at its last lone failure

    def payload(self) -> dict[str, Any]:
        """The sObject Collections record: ``attributes.type`` + ``id`` + fields."""
        return {"attributes": {"type": self.key.sobject}, "id": self.key.record_id,
                **self.fields}

    @property
    def isolated(self) -> bool:
        return self.lone_failures > 0


def _applies_after(entry: Entry, other: Entry, *, arrived_later: bool) -> bool:
    """``entry`` is applied after ``other``: the newer version; between equal (or missing)
    versions, the later arrival."""
    if entry.version is None or other.version is None or entry.version == other.version:
        return arrived_later
    return entry.version > other.version


def _mergeable(first: Entry, then: Entry) -> bool:
    """Writing ``first`` then ``then`` is the same as writing them merged, whatever version
    Salesforce holds: ``then`` sets every field ``first`` sets, or the versions are equal
    (none can lie between them). Not so otherwise: ``first``'s other fields would pass the
    fence with ``then``'s version even where Salesforce holds a version between the two."""
    if first.version is None or then.version is None or first.version == then.version:
        return True
    return then.fields.keys() >= first.fields.keys()


def _merge(keep: Entry, other: Entry, *, other_after: bool) -> None:
    """Merge ``other`` into ``keep`` (``other_after``: ``other`` is the one applied later)."""
    first, then = (keep, other) if other_after else (other, keep)
    # the merged entry is the later write alone when that sets every field of the earlier
    # one: it keeps its own count of attempts (an entry that met 9 locks would otherwise
    # spend the last attempt of a newer outcome tried once, and dead-letter both); else
    # the earlier write's fields are still in it, and so is its count
    attempts = (then.attempts if then.fields.keys() >= first.fields.keys()
                else max(keep.attempts, other.attempts))
    keep.fields = {**first.fields, **then.fields}
    keep.version = then.version if then.version is not None else first.version
    keep.sources = first.sources + [t for t in then.sources if t not in first.sources]
    keep.since = min(keep.since, other.since)
    keep.not_before = max(keep.not_before, other.not_before)
    keep.attempts = attempts
    keep.call_failures = max(keep.call_failures, other.call_failures)
    caps = [e.cap for e in (keep, other) if e.cap is not None]
    keep.cap = min(caps) if caps else None
    keep.lone_failures = max(keep.lone_failures, other.lone_failures)
    keep.answered_mark = max(keep.answered_mark, other.answered_mark)
    keep.failed_mark = max(keep.failed_mark, other.failed_mark)


class Batcher:
    """The pending map. ``take`` removes entries; the caller must ``ack``/``fail``/``retry``
    every taken entry, or the outcomes it covers never complete."""

    def __init__(self) -> None:
        # per record, its pending entries in version order; only the first is sendable,
        # and only while no entry of the record is out (taken, not yet settled)
        self._pending: dict[RecordKey, list[Entry]] = {}
        self._out: set[RecordKey] = set()

    def __len__(self) -> int:
        return sum(len(chain) for chain in self._pending.values())

    def add(self, tracked: Tracked, updates: Iterable[RecordUpdate], now: float) -> None:
        for update in updates:
            tracked.remaining.add(update.key)
            self._place(Entry(update.key, dict(update.fields), [tracked], now,
                              version=update.version), arrived_later=True)

    def _place(self, entry: Entry, *, arrived_later: bool) -> None:
        """Put ``entry`` in its record's chain: merged into a neighbour where
        :func:`_mergeable`, else as an entry of its own in version order."""
        chain = self._pending.setdefault(entry.key, [])
        at = sum(1 for e in chain if _applies_after(entry, e, arrived_later=arrived_later))
        if at > 0 and _mergeable(chain[at - 1], entry):
            _merge(chain[at - 1], entry, other_after=True)
        elif at < len(chain) and _mergeable(entry, chain[at]):
            _merge(chain[at], entry, other_after=False)
        else:
            chain.insert(at, entry)

    def _heads(self) -> list[Entry]:
        return [chain[0] for key, chain in self._pending.items() if key not in self._out]

    def ready(self, now: float) -> list[Entry]:
        return [e for e in self._heads() if e.not_before <= now]

    def due(self, now: float, *, batch_size: int, linger_s: float) -> bool:
        """A flush is due: a full batch is ready, or the oldest ready entry lingered enough."""
        ready = self.ready(now)
        if len(ready) >= batch_size:
            return True
        return bool(ready) and now - min(e.since for e in ready) >= linger_s

    def oldest_since(self, now: float) -> float:
        """Arrival time of the oldest ready entry (``now`` when none is ready)."""
        return min((e.since for e in self.ready(now)), default=now)

    def next_ready_at(self) -> float | None:
        """Earliest time an entry becomes sendable (for the poll timeout)."""
        return min((e.not_before for e in self._heads()), default=None)

    def take(self, now: float, limit: int) -> list[Entry]:
        """Up to ``limit`` ready entries, oldest first, removed from the map. An isolated
        entry (one whose call alone failed) goes alone, and never with others. When the
        oldest has a ``cap`` (its calls kept failing), the call takes at most that many:
        entries with a cap first (the batch that failed, re-sent smaller), then others;
        never an entry whose cap is below the call's size."""
        ready = sorted(self.ready(now), key=lambda e: e.since)
        if ready and ready[0].isolated:
            taken = ready[:1]
        else:
            pool = [e for e in ready if not e.isolated]
            size = min(limit, pool[0].cap or limit) if pool else limit
            fits = [e for e in pool if e.cap is None or e.cap >= size]
            if size < limit:  # the capped batch first
                fits = ([e for e in fits if e.cap is not None]
                        + [e for e in fits if e.cap is None])
            taken = fits[:size]
        for entry in taken:
            chain = self._pending[entry.key]
            chain.pop(0)
            if not chain:
                del self._pending[entry.key]
            self._out.add(entry.key)
        return taken

    def ack(self, entry: Entry) -> list[Tracked]:
        """Salesforce stored ``entry`` (or settled it otherwise); returns the outcomes that
        became complete. The record's next pending entry becomes sendable."""
        self._out.discard(entry.key)
        done = []
        for tracked in entry.sources:
            tracked.remaining.discard(entry.key)
            if tracked.complete:
                done.append(tracked)
        return done

    def fail(self, entry: Entry, error: RecordError) -> list[Tracked]:
        """``entry`` failed permanently; its outcomes carry the error to the dead letter."""
        for tracked in entry.sources:
            tracked.errors.append(error)
        return self.ack(entry)

    def retry(self, entry: Entry, not_before: float, *, count_attempt: bool = True) -> None:
        """Put a taken entry back in its place; updates of the same record that arrived
        meanwhile merge with it, or stay apart, as in ``add``. ``count_attempt=False`` for
        whole-call failures (an outage or the API limit), which must never exhaust a
        record's attempts."""
        if count_attempt:
            entry.attempts += 1
        entry.not_before = not_before
        self._out.discard(entry.key)
        self._place(entry, arrived_later=False)

    def forget(self, partitions: set[int]) -> None:
        """Drop the outcomes of revoked partitions (their new owner redelivers them).

        Fields they merged into a record shared with a kept partition stay in the entry:
        they are absolute values the new owner writes again anyway.
        """
        for key in list(self._pending):
            kept = []
            for entry in self._pending[key]:
                entry.sources = [t for t in entry.sources if t.partition not in partitions]
                if entry.sources:
                    kept.append(entry)
            if kept:
                self._pending[key] = kept
            else:
                del self._pending[key]


class OffsetTracker:
    """Consumed-but-incomplete offsets per partition → the offsets safe to commit."""

    def __init__(self) -> None:
        self._open: dict[int, set[int]] = {}
        self._next: dict[int, int] = {}  # last consumed + 1
        self._committed: dict[int, int] = {}

    def consumed(self, partition: int, offset: int) -> None:
        self._open.setdefault(partition, set()).add(offset)
        self._next[partition] = max(self._next.get(partition, 0), offset + 1)

    def complete(self, partition: int, offset: int) -> None:
        self._open.get(partition, set()).discard(offset)

    def outstanding(self) -> int:
        return sum(len(s) for s in self._open.values())

    def committable(self) -> dict[int, int]:
        """Per partition, the next offset to commit, where it moved since the last commit."""
        out = {}
        for partition, nxt in self._next.items():
            still_open = self._open.get(partition)
            position = min(still_open) if still_open else nxt
            if position > self._committed.get(partition, -1):
                out[partition] = position
        return out

    def committed(self, positions: dict[int, int]) -> None:
        for partition, position in positions.items():
            self._committed[partition] = max(self._committed.get(partition, -1), position)

    def forget(self, partitions: set[int]) -> None:
        for partition in partitions:
            self._open.pop(partition, None)
            self._next.pop(partition, None)
            self._committed.pop(partition, None)
