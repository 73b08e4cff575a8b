"""What the worker remembers per Salesforce Order, typed, and where it keeps it.

Two tables keyed by Order id, partitioned exactly like the requests topic (their changelogs
move with the partitions; see :mod:`streams.faust_seam`):

* ``idem`` — the **dedupe memory**: IdemKey → :class:`DedupeEntry`, the decision taken for
  the event that carried that IdemKey (its outcome, and whether the outcome's send was
  acknowledged) and for its duplicates (other events with the same IdemKey);
* ``intents`` — the Order's **provisioning intent** (:class:`Intent`): ``pending`` while an
  ``AddOrder`` may have been sent, then ``accepted`` or ``failed`` with the outcome.

Values are stored as JSON objects with the field names below (the format of every release
so far, so an upgrade reads old tables). The only transitions of an intent are
:meth:`Intent.pending` (a new attempt; durable before its first WHMCS write),
:meth:`Intent.renewed` (its writer may send longer; durable before that send) and
:meth:`Intent.settled` (the attempt's outcome) — every path that finishes an attempt
(the event's own, a crash between two table writes found later, the sweep's recovery)
goes through :meth:`settled`.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson

from common.errors import KafkaError

PENDING, ACCEPTED, FAILED_STATE = "pending", "accepted", "failed"
MAX_DUPS_REMEMBERED = 20
# One Order's dedupe memory is one table value, one changelog record: the broker refuses a
# record over 1 MiB (a changelog write refused stops the worker, and every restart would
# send it again). Bounded well under that: the newest IdemKeys are kept (see ``bounded``).
MAX_IDEM_KEYS_REMEMBERED = 200
MAX_MEMORY_BYTES = 256 * 1024


class DurabilityError(KafkaError):
    """A table change could not be made durable: the local tables are ahead of their
    changelogs, and the worker must stop without acknowledging anything (a restart restores
    the tables from the changelogs and the events are redelivered)."""


class UnreadableState(ValueError):
    """A table value that does not decode as this module's JSON (truncated, not JSON, another
    shape): a record written to a changelog by hand or by a bug, restored into the store. It
    stays there whatever is retried, so it is not retried: the event is dead-lettered naming
    the table and the Order, and the sweep passes over the entry (saying so once)."""

    def __init__(self, table: str, order_id: str, cause: BaseException) -> None:
        super().__init__(f"the worker's {table} table holds a value for Order {order_id} that "
                         f"cannot be read ({type(cause).__name__}: {cause})")
        self.table, self.order_id = table, order_id


#: what decoding a malformed value raises, read with :func:`read_value`: orjson's
#: JSONDecodeError (a ValueError), and a JSON value of another shape met by the typed reads
#: (a list's ``.items``, a string where a dict belongs)
DECODE_ERRORS: tuple[type[BaseException], ...] = (ValueError, TypeError, AttributeError)


_T = TypeVar("_T")


def _evolve(value: _T, **changes: Any) -> _T:
    """``dataclasses.replace`` for these frozen dataclasses (no ``__post_init__``, no
    ``InitVar``, no slots): a copy of the instance's fields with ``changes``. ``replace``
    reads the class's fields and runs the frozen ``__init__`` (an ``object.__setattr__`` per
    field): 3.9 µs for an intent, 0.6 µs here; two per Order. Tested equal to ``replace``."""
    new = object.__new__(type(value))
    fields = new.__dict__
    fields.update(value.__dict__)
    fields.update(changes)
    return new


@dataclass(frozen=True)
class Intent:
    order_id: str
    idem_key: str
    event_uuid: str
    state: str  # pending | accepted | failed
    attempt: int
    client_id: int | None
    at: int  # epoch ms of the last transition
    correlation_id: str | None = None
    requested_at: int | None = None
    opportunity_id: str | None = None
    whmcs_order_id: int | None = None
    outcome: dict[str, Any] | None = None
    # an AddOrder of an attempt may have created (or did create) a WHMCS order for the Order
    may_exist: bool = False
    writer: str = ""  # the worker process that wrote it
    lease_until: int | None = None  # epoch ms: its writer sends to WHMCS only before this
    # WHMCS clients earlier attempts sent to, while a lookup there is still owed (the
    # Account's client changed since): every lookup for the Order reads them too
    earlier_client_ids: tuple[int, ...] = ()
    # where the attempt's request event is in the requests topic (None: not known — an
    # intent written before they were kept): while the group's commit has not passed it,
    # the event is delivered again and resumes the attempt itself (streams.recovery)
    partition: int | None = None
    offset: int | None = None

    @classmethod
    def pending(cls, *, order_id: str, idem_key: str, event_uuid: str, attempt: int,
                client_id: int, at: int, writer: str, lease_until: int,
                correlation_id: str | None = None, requested_at: int | None = None,
                opportunity_id: str | None = None,
                earlier_client_ids: tuple[int, ...] = (),
                partition: int | None = None, offset: int | None = None) -> Intent:
        return cls(order_id=order_id, idem_key=idem_key, event_uuid=event_uuid,
                   state=PENDING, attempt=attempt, client_id=client_id, at=at,
                   correlation_id=correlation_id, requested_at=requested_at,
                   opportunity_id=opportunity_id, writer=writer, lease_until=lease_until,
                   earlier_client_ids=earlier_client_ids, partition=partition, offset=offset)

    def renewed(self, lease_until: int, *, writer: str | None = None) -> Intent:
        """The same attempt, its writer (``writer``, when given: who sends for it now) free
        to send to WHMCS until ``lease_until``."""
        return _evolve(self, lease_until=lease_until,
                       writer=self.writer if writer is None else writer)

    def settled(self, outcome: dict[str, Any], at: int, *, may_exist: bool | None = None
                ) -> Intent:
        """The attempt's outcome: ``Provisioned`` → accepted, anything else → failed."""
        whmcs_order_id = outcome.get("whmcs_order_id")
        return _evolve(
            self, state=ACCEPTED if outcome.get("status") == "Provisioned" else FAILED_STATE,
            outcome=outcome, whmcs_order_id=whmcs_order_id, at=at,
            may_exist=whmcs_order_id is not None if may_exist is None else may_exist)

    @property
    def is_pending(self) -> bool:
        return self.state == PENDING

    @property
    def forgettable(self) -> bool:
        """Deleted once older than the dedupe TTL (:mod:`streams.recovery`): a finished
        attempt that left no WHMCS order behind. Kept for good: a pending intent, and one
        whose attempt may have created a WHMCS order or did (``whmcs_order_id``) — a Failed
        outcome writes no WHMCS id back, and a Provisioned one's write-back may never land
        (the sink dead-lettered it, the Order stays ``Activating``): the intent is then the
        only memory of that order, and a replayed or new request is decided on it
        (``Skipped ALREADY_PROVISIONED``, or a lookup first), never a second ``AddOrder``."""
        return not self.is_pending and not self.may_exist and self.whmcs_order_id is None

    def decided(self, idem_key: str, event_uuid: str | None) -> bool:
        """This very event's attempt has an outcome."""
        return not self.is_pending and self.outcome is not None and \
            self.idem_key == idem_key and self.event_uuid == event_uuid

    def sends_until(self) -> int | None:
        """Epoch ms after which its writer could no longer send to WHMCS (``at`` for an
        intent written before leases existed)."""
        return self.lease_until if self.lease_until is not None else self.at

    def to_json(self) -> dict[str, Any]:
        # by hand: dataclasses.asdict deep-copies the outcome (2 % of the worker's CPU)
        return {"order_id": self.order_id, "idem_key": self.idem_key,
                "event_uuid": self.event_uuid, "state": self.state, "attempt": self.attempt,
                "client_id": self.client_id, "at": self.at,
                "correlation_id": self.correlation_id, "requested_at": self.requested_at,
                "opportunity_id": self.opportunity_id, "whmcs_order_id": self.whmcs_order_id,
                "outcome": dict(self.outcome) if self.outcome is not None else None,
                "may_exist": self.may_exist, "writer": self.writer,
                "lease_until": self.lease_until,
                "earlier_client_ids": list(self.earlier_client_ids),
                "partition": self.partition, "offset": self.offset}

    @classmethod
    def from_json(cls, raw: dict[str, Any] | None) -> Intent | None:
        if raw is not None and not isinstance(raw, dict):
            # a list, a string, a number: refused (an UnreadableState), not read as no intent
            raise TypeError(f"intent of another shape: {type(raw).__name__}")
        if not raw:
            return None
        values = {k: v for k, v in raw.items() if k in _INTENT_FIELDS}
        values.setdefault("order_id", "")
        values.setdefault("idem_key", "")
        values.setdefault("state", PENDING)
        values.setdefault("event_uuid", "")
        values.setdefault("attempt", 1)
        values.setdefault("client_id", None)
        values.setdefault("at", 0)
        values["earlier_client_ids"] = tuple(
            int(c) for c in values.get("earlier_client_ids") or ())
        # typed as the code reads them, so that a value of another type (written by hand or
        # by a bug) is refused here — an UnreadableState — and not met later in a sweep's
        # arithmetic, where it stopped every sweep
        values["at"], values["attempt"] = int(values["at"]), int(values["attempt"])
        for name in _OPTIONAL_INTS:
            if values.get(name) is not None:
                values[name] = int(values[name])
        if not isinstance(values["state"], str) or not isinstance(
                values.get("outcome") or {}, dict):
            raise TypeError(f"intent of another shape: state {values['state']!r}, outcome "
                            f"{type(values.get('outcome')).__name__}")
        return cls(**values)


_INTENT_FIELDS = frozenset(f.name for f in dataclasses.fields(Intent))
_OPTIONAL_INTS = ("client_id", "requested_at", "whmcs_order_id", "lease_until", "partition",
                  "offset")


@dataclass(frozen=True)
class Decided:
    """One event's decision: the outcome, and whether its send was acknowledged."""

    outcome: dict[str, Any] | None
    emitted: bool = False


@dataclass(frozen=True)
class DedupeEntry:
    """The decision for one IdemKey: the first event that carried it, and its duplicates."""

    event_uuid: str
    status: str
    outcome: dict[str, Any] | None
    emitted: bool
    at: int
    dups: dict[str, Decided] = field(default_factory=dict)
    # epoch ms of the newest duplicate's decision (0: none): the entry is remembered for the
    # TTL from there, so that a duplicate arriving days after the first event is not
    # forgotten while its own record is still in the requests topic
    last_at: int = 0

    @property
    def newest(self) -> int:
        """When the entry's last decision was taken (the first event's or a duplicate's)."""
        return max(self.at, self.last_at) if self.last_at else self.at

    @classmethod
    def first(cls, event_uuid: str, outcome: dict[str, Any], at: int) -> DedupeEntry:
        return cls(event_uuid, outcome["status"], outcome, False, at)

    def decision_of(self, event_uuid: str) -> Decided | None:
        """The decision taken for ``event_uuid`` (the first event or a duplicate)."""
        if event_uuid == self.event_uuid:
            return Decided(self.outcome, self.emitted)
        return self.dups.get(event_uuid)

    def with_duplicate(self, event_uuid: str, outcome: dict[str, Any], at: int
                       ) -> DedupeEntry:
        dups = {**self.dups, event_uuid: Decided(outcome)}
        while len(dups) > MAX_DUPS_REMEMBERED:
            dups.pop(next(iter(dups)))
        return _evolve(self, dups=dups, last_at=max(self.last_at, at))

    def marked_emitted(self, event_uuid: str) -> DedupeEntry | None:
        """The entry with ``event_uuid``'s outcome acknowledged; None when nothing changes."""
        if event_uuid == self.event_uuid:
            return None if self.emitted else _evolve(self, emitted=True)
        dup = self.dups.get(event_uuid)
        if dup is None or dup.emitted:
            return None
        return _evolve(self, dups={**self.dups,
                                               event_uuid: Decided(dup.outcome, True)})

    def unsent(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """(event uuid, outcome) of every decision whose send was never acknowledged."""
        if not self.emitted and self.outcome:
            yield self.event_uuid, self.outcome
        for uuid, dup in self.dups.items():
            if not dup.emitted and dup.outcome:
                yield uuid, dup.outcome

    def to_json(self) -> dict[str, Any]:
        raw = {"event_uuid": self.event_uuid, "status": self.status, "outcome": self.outcome,
               "emitted": self.emitted, "at": self.at,
               "dups": {u: {"outcome": d.outcome, "emitted": d.emitted}
                        for u, d in self.dups.items()}}
        if self.last_at:
            raw["last_at"] = self.last_at
        return raw

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> DedupeEntry:
        # an outcome of another shape is refused here (an UnreadableState, dead-lettered at
        # once), not met at its send: retried three times, then WORKER_ERROR, never counted
        # as unreadable
        dups = {u: Decided(_outcome(d.get("outcome")), bool(d.get("emitted")))
                for u, d in (raw.get("dups") or {}).items()}
        return cls(str(raw.get("event_uuid") or ""), str(raw.get("status") or ""),
                   _outcome(raw.get("outcome")), bool(raw.get("emitted")),
                   int(raw.get("at") or 0), dups, int(raw.get("last_at") or 0))


def _outcome(value: Any) -> dict[str, Any] | None:
    """A stored outcome: an object, or none yet."""
    if value is not None and not isinstance(value, dict):
        raise TypeError(f"outcome of another shape: {type(value).__name__}")
    return value


Memory = dict[str, DedupeEntry]  # one Order's dedupe memory: IdemKey → entry


def has_unsent(entry: Any) -> bool:
    """A dedupe entry (as stored) holds an outcome, the first event's or a duplicate's,
    whose send was never acknowledged (:meth:`DedupeEntry.unsent`)."""
    if not isinstance(entry, dict):
        return False
    if not entry.get("emitted") and entry.get("outcome"):
        return True
    dups = entry.get("dups")
    return isinstance(dups, dict) and any(
        isinstance(d, dict) and not d.get("emitted") and d.get("outcome") for d in dups.values())


def memory_from_json(raw: dict[str, Any] | None) -> Memory:
    """An Order's dedupe memory as stored; none stored, an empty one. A value or an entry of
    another shape raises (an UnreadableState where it is read): passed over, it was read as
    nothing remembered and the event decided afresh."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise TypeError(f"dedupe memory of another shape: {type(raw).__name__}")
    memory = {}
    for key, value in raw.items():
        if not isinstance(value, dict):
            raise TypeError(f"dedupe entry {key!r} of another shape: {type(value).__name__}")
        memory[key] = DedupeEntry.from_json(value)
    return memory


def memory_to_json(memory: Memory) -> dict[str, Any]:
    return {k: e.to_json() for k, e in memory.items()}


def bounded(memory: Memory, raw: dict[str, Any]) -> tuple[Memory, dict[str, Any]]:
    """``memory`` (and ``raw``, its JSON) within :data:`MAX_IDEM_KEYS_REMEMBERED` entries and
    :data:`MAX_MEMORY_BYTES` encoded: the oldest entries whose outcomes were all sent are
    dropped first. An entry holding an outcome not yet acknowledged is never dropped (the
    sweep resends it from there; nothing else holds it) — the one just recorded is such an
    entry. A dropped IdemKey is what the TTL forgets sooner: an event carrying it again is
    decided afresh — the Order's intent (pending: resumed with a lookup; accepted with a
    WHMCS order: ``Skipped``; this very event's: its outcome again) and then the Salesforce
    guard keep it from a second WHMCS order (:func:`streams.decide.decide`)."""
    if len(memory) <= 1:
        return memory, raw
    size = len(orjson.dumps(raw))
    excess = len(memory) - MAX_IDEM_KEYS_REMEMBERED
    if excess <= 0 and size <= MAX_MEMORY_BYTES:
        return memory, raw
    sent = sorted((entry.newest, i, key) for i, (key, entry) in enumerate(memory.items())
                  if not any(entry.unsent()))
    dropped: set[str] = set()
    for _at, _i, key in sent:
        if excess <= 0 and size <= MAX_MEMORY_BYTES:
            break
        dropped.add(key)
        excess -= 1
        # its share of the encoded object: "key":value and a comma
        size -= len(orjson.dumps(key)) + len(orjson.dumps(raw[key])) + 2
    return ({k: e for k, e in memory.items() if k not in dropped},
            {k: v for k, v in raw.items() if k not in dropped})


def read_value(table: MutableMapping[str, Any], key: str) -> Any:
    """``DurableTable.read`` (one store lookup), or a plain mapping's ``get`` (unit tests)."""
    read = getattr(table, "read", None)
    return read(key) if read is not None else table.get(key)


class OrderState:
    """Typed reads and writes over the two tables (faust tables in the worker, dicts in
    unit tests). ``flush`` returns once every write made so far is acknowledged by the
    broker; :class:`GroupCommit` shares it among the Orders that need it together."""

    def __init__(self, idem: MutableMapping[str, Any], intents: MutableMapping[str, Any],
                 flush: Callable[[], Awaitable[None]] | None = None) -> None:
        self.idem, self.intents = idem, intents
        self._flush = flush
        self.watched = False  # the tables report every change (streams.recovery's index)

    async def flush(self) -> None:
        if self._flush is not None:
            await self._flush()

    def memory(self, order_id: str) -> Memory:
        try:
            return memory_from_json(read_value(self.idem, order_id))
        except DECODE_ERRORS as exc:
            raise UnreadableState("idem", order_id, exc) from exc

    def set_memory(self, order_id: str, memory: Memory,
                   raw: dict[str, Any] | None = None) -> None:
        if memory:
            self.idem[order_id] = memory_to_json(memory) if raw is None else raw
        elif order_id in self.idem:
            del self.idem[order_id]

    def intent(self, order_id: str) -> Intent | None:
        try:
            return Intent.from_json(read_value(self.intents, order_id))
        except DECODE_ERRORS as exc:
            raise UnreadableState("intents", order_id, exc) from exc

    def set_intent(self, intent: Intent) -> None:
        self.intents[intent.order_id] = intent.to_json()

    def delete_intent(self, order_id: str) -> None:
        del self.intents[order_id]

    # ``memory``/``current``: the value as the caller read it, when nothing else can have
    # written it since (one Order's event holds the Order until it is done) — saves a read.

    def record(self, order_id: str, idem_key: str, event_uuid: str, outcome: dict[str, Any],
               at: int, *, memory: Memory | None = None) -> Memory:
        """Remember ``outcome`` as the decision for this event (a duplicate of the IdemKey's
        first event is remembered under it); returns the Order's memory as written, bounded
        (:func:`bounded`: the oldest IdemKeys whose outcomes were sent may be dropped)."""
        memory = dict(self.memory(order_id) if memory is None else memory)
        existing = memory.get(idem_key)
        if existing is not None and existing.event_uuid != event_uuid:
            memory[idem_key] = existing.with_duplicate(event_uuid, outcome, at)
        else:
            memory[idem_key] = DedupeEntry.first(event_uuid, outcome, at)
        memory, raw = bounded(memory, memory_to_json(memory))
        self.set_memory(order_id, memory, raw)
        return memory

    def mark_emitted(self, order_id: str, idem_key: str, event_uuid: str, *,
                     memory: Memory | None = None) -> None:
        memory = dict(self.memory(order_id) if memory is None else memory)
        entry = memory.get(idem_key)
        changed = entry.marked_emitted(event_uuid) if entry is not None else None
        if changed is not None:
            memory[idem_key] = changed
            self.set_memory(order_id, memory)

    def settle(self, order_id: str, outcome: dict[str, Any], at: int, *,
               may_exist: bool | None = None, current: Intent | None = None
               ) -> Intent | None:
        """Settle the Order's pending intent with ``outcome`` (the one place that does)."""
        intent = self.intent(order_id) if current is None else current
        if intent is None:
            return None
        settled = intent.settled(outcome, at, may_exist=may_exist)
        self.set_intent(settled)
        return settled

    def settle_from_entry(self, order_id: str, at: int) -> bool:
        """A crash between the two table writes of a decision can leave the outcome in the
        dedupe entry while the intent stays ``pending``: settle the intent from it (else the
        sweep would look the order up and send a second, ``recovered`` outcome)."""
        intent = self.intent(order_id)
        if intent is None or not intent.is_pending:
            return False
        entry = self.memory(order_id).get(intent.idem_key)
        decided = entry.decision_of(intent.event_uuid) if entry is not None else None
        # Skipped too: a resumed attempt the guard refuses once its lookup found nothing
        if decided is None or not decided.outcome or \
                decided.outcome.get("status") not in ("Provisioned", "Failed", "Skipped"):
            return False
        # what the attempt knew of WHMCS (an AddOrder that may have landed) went with the
        # intent write that never landed: assume it may have, the next attempt looks first —
        # but for the sweep's PROVISIONING_INTERRUPTED, its lookup's verdict after the settle
        # moment: no order was made, none can land (kept for good otherwise, never expired)
        interrupted = decided.outcome.get("error_code") == "PROVISIONING_INTERRUPTED" and \
            decided.outcome.get("whmcs_order_id") is None
        self.set_intent(intent.settled(decided.outcome, at, may_exist=not interrupted))
        return True


class GroupCommit:
    """A durability barrier shared by whoever reaches it together.

    ``await barrier()`` returns once every table write made before the call is acknowledged
    by the broker. Callers that arrive while no flush has started yet join the next one;
    those that arrive during a flush start (or join) the one after it — so the number of
    flushes follows the number of *moments* Orders need durability, not the number of
    Orders, and no Order waits for a flush that started before its writes.

    A failed flush fails every later barrier too. A table takes the writes it flushes when
    its flush task first runs, a loop turn or two after the flush was started: a write made
    in between went out with the flush that failed while its writer waited on the next one,
    which found nothing left to send and succeeded — the writer went on to ``AddOrder`` on
    an intent never made durable. Once a flush has failed the tables are ahead of their
    changelogs and nothing may be acknowledged again (the worker stops; a restart restores
    them)."""

    def __init__(self, flush: Callable[[], Awaitable[None]]) -> None:
        self._flush = flush
        self._next: asyncio.Future[None] | None = None
        self._running: asyncio.Task[None] | None = None
        self._failed: Exception | None = None
        self.flushes = 0

    async def __call__(self) -> None:
        if self._failed is not None:
            raise self._failed
        if self._next is None:
            self._next = asyncio.get_running_loop().create_future()
            if self._running is None:
                asyncio.get_running_loop().call_soon(self._start)
        await asyncio.shield(self._next)

    def _start(self) -> None:
        future, self._next = self._next, None
        if future is None:
            return
        self._running = asyncio.ensure_future(self._run(future))

    async def _run(self, future: asyncio.Future[None]) -> None:
        self.flushes += 1
        try:
            if self._failed is not None:
                raise self._failed
            await self._flush()
        except BaseException as exc:  # noqa: BLE001 - handed to every waiter
            if isinstance(exc, Exception) and not isinstance(exc, DurabilityError):
                # whatever failed, the tables are now ahead of their changelogs: the worker
                # stops (the handler stops on DurabilityError; any other error it takes for
                # the event's own, and dead-lettered every later event at its barrier)
                failure = DurabilityError(f"table flush failed: {exc!r}")
                failure.__cause__ = exc
                exc = failure
            if isinstance(exc, Exception) and self._failed is None:
                self._failed = exc
            if not future.done():
                future.set_exception(exc)
        else:
            if not future.done():
                future.set_result(None)
        finally:
            self._running = None
            if self._next is not None:  # callers arrived during this flush
                self._start()
