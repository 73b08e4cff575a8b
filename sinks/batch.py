"""Batching across outcomes, and the bookkeeping that decides which offsets may be committed.

Three structures, all pure (no Kafka, no HTTP), driven by :class:`sinks.app.Sink`:

* :class:`Batcher` — the pending map keyed by ``(sobject, id)``. Updates of many outcomes
  merge into one entry per record **in version order** (the outcome's ``completed_at``;
  arrival order between equal versions), so the newer outcome wins field by field; the
  merged entry is exactly what applying the outcomes one after another would leave. One
  Order's outcomes arrive in version order (one partition); an Opportunity shared by
  Orders of different partitions can get them the other way round, and an older update
  that arrives later then merges *under* the newer one. Each entry remembers the outcomes
  it covers. A record never has two entries, so a retried record cannot overtake a newer
  update of itself: a retry merges under whatever newer arrived meanwhile.
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

    @property
    def complete(self) -> bool:
        return not self.remaining


@dataclass(eq=False)
class Entry:
    """The merged update of one record and the outcomes it covers."""

    key: RecordKey
    fields: dict[str, Any]
    sources: list[Tracked]
    since: float  # when the oldest update in it arrived (linger clock)
    attempts: int = 0  # failed attempts so far (transient errors)
    not_before: float = 0.0  # backoff: not sent before this time
    version: int | None = None  # newest version merged in (epoch ms of completed_at)

    def payload(self) -> dict[str, Any]:
        """The sObject Collections record: ``attributes.type`` + ``id`` + fields."""
        return {"attributes": {"type": self.key.sobject}, "id": self.key.record_id,
                **self.fields}

    def merge(self, fields: dict[str, Any], version: int | None) -> None:
        """Merge another update of this record as if both were applied in version order:
        a newer (or equal, or unversioned) one over these fields, an older one under."""
        if version is None or self.version is None or version >= self.version:
            self.fields.update(fields)
            if version is not None:
                self.version = version
        else:
            self.fields = {**fields, **self.fields}


class Batcher:
    """The pending map. ``take`` removes entries; the caller must ``ack``/``fail``/``retry``
    every taken entry, or the outcomes it covers never complete."""

    def __init__(self) -> None:
        self._pending: dict[RecordKey, Entry] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, tracked: Tracked, updates: Iterable[RecordUpdate], now: float) -> None:
        for update in updates:
            tracked.remaining.add(update.key)
            entry = self._pending.get(update.key)
            if entry is None:
                self._pending[update.key] = Entry(update.key, dict(update.fields), [tracked],
                                                  now, version=update.version)
            else:
                entry.merge(update.fields, update.version)
                if tracked not in entry.sources:
                    entry.sources.append(tracked)

    def ready(self, now: float) -> list[Entry]:
        return [e for e in self._pending.values() if e.not_before <= now]

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
        if not self._pending:
            return None
        return min(e.not_before for e in self._pending.values())

    def take(self, now: float, limit: int) -> list[Entry]:
        """Up to ``limit`` ready entries, oldest first, removed from the map."""
        taken = sorted(self.ready(now), key=lambda e: e.since)[:limit]
        for entry in taken:
            del self._pending[entry.key]
        return taken

    @staticmethod
    def ack(entry: Entry) -> list[Tracked]:
        """Salesforce stored ``entry``; returns the outcomes that became complete."""
        done = []
        for tracked in entry.sources:
            tracked.remaining.discard(entry.key)
            if tracked.complete:
                done.append(tracked)
        return done

    @staticmethod
    def fail(entry: Entry, error: RecordError) -> list[Tracked]:
        """``entry`` failed permanently; its outcomes carry the error to the dead letter."""
        for tracked in entry.sources:
            tracked.errors.append(error)
        return Batcher.ack(entry)

    def retry(self, entry: Entry, not_before: float, *, count_attempt: bool = True) -> None:
        """Put a taken entry back; updates of the same record that arrived meanwhile merge
        in version order (a newer one wins over its fields). ``count_attempt=False`` for
        whole-call failures (an outage or the API limit), which must never exhaust a
        record's attempts."""
        if count_attempt:
            entry.attempts += 1
        entry.not_before = not_before
        newer = self._pending.get(entry.key)
        if newer is not None:
            entry.merge(newer.fields, newer.version)
            entry.sources.extend(t for t in newer.sources if t not in entry.sources)
            entry.since = min(entry.since, newer.since)
            entry.not_before = max(entry.not_before, newer.not_before)
        self._pending[entry.key] = entry

    def forget(self, partitions: set[int]) -> None:
        """Drop the outcomes of revoked partitions (their new owner redelivers them).

        Fields they merged into a record shared with a kept partition stay in the entry:
        they are absolute values the new owner writes again anyway.
        """
        for key in list(self._pending):
            entry = self._pending[key]
            entry.sources = [t for t in entry.sources if t.partition not in partitions]
            if not entry.sources:
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
