"""One flush: the pending entries → ``PATCH composite/sobjects`` calls → per-record verdicts.

Per-record errors (``allOrNone: false``) are sorted into:

* superseded — the fence's validation rule refused the record
  (``FIELD_CUSTOM_VALIDATION_EXCEPTION`` with ``SFPROV_SUPERSEDED`` in its message, see
  :mod:`sinks.fence`): Salesforce holds a newer outcome, so there is nothing to write and
  nothing to retry or dead-letter. It wins over any other error of the same record;
* transient — :data:`TRANSIENT_CODES` (``UNABLE_TO_LOCK_ROW`` and kin), or any error whose
  message carries ``UNABLE_TO_LOCK_ROW`` (lock contention inside an Order or Opportunity
  trigger — ``CANNOT_INSERT_UPDATE_ACTIVATE_ENTITY`` — or record-triggered Flow —
  ``CANNOT_EXECUTE_FLOW_TRIGGER``, :func:`is_transient`): the record goes back to the
  pending map with a backoff;
* permanent — everything else (``INVALID_FIELD``, ``ENTITY_IS_DELETED``,
  ``FIELD_CUSTOM_VALIDATION_EXCEPTION``, ``INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST``,
  ``NOT_FOUND``, ``MALFORMED_ID``, ...): dead-lettered, the rest of the batch proceeds.
  Unknown codes count as permanent so one odd record can never stall a partition forever.
  Except: a code in :data:`ACCESS_CODES` is also what a permission the integration user lost
  gives every record of an object alike (Update removed: ``INSUFFICIENT_ACCESS_OR_READONLY``;
  Read removed: ``NOT_FOUND``; a field made read-only: ``INVALID_FIELD_FOR_INSERT_UPDATE``;
  a field hidden by field-level security or deleted: ``INVALID_FIELD``).
  The writer asks describe whether the object and the fields written are still updatable
  (once per object per write, :func:`sinks.fence.write_access_problem`); when they are
  not, or describe cannot answer, it is a refusal no record caused: those records are
  returned apart (``no_access``), and the sink requeues them and pauses as below;
  otherwise they are dead-lettered.

One call holds the records of one type together (Orders, then Opportunities): Salesforce
processes a mixed list in chunks, a new chunk at each change of type, and refuses a call of
more than 10 chunks; outcomes interleave an Order and its Opportunity.

Whole-call failures:

* retryable ones (5xx, connection errors, ``REQUEST_LIMIT_EXCEEDED`` as
  :class:`~common.errors.SalesforceLimitError`, auth still refused after the client's one
  re-authentication) propagate — the sink requeues the batch, pauses and backs off, and
  when the same kind of failure repeats, sends fewer records per call, down to one alone
  (:mod:`sinks.app`, "Probing");
* so do refusals no record caused (:func:`~common.salesforce.refuses_records` false, the
  rule the worker's guard read follows too): a login refused (``invalid_grant``: a revoked
  or expired certificate, a frozen user), a 401/403/404 for the installation (permissions,
  API version), a 400 without Salesforce's own error (the page of a proxy, a WAF or a load
  balancer in front of it, which refuses every call alike) — failing the records would
  dead-letter every outcome while the installation is at fault;
* a 400 for the request cannot say which record caused it, so the batch is bisected until
  the culprit stands alone and is failed with that error. The cost is O(k·log n) extra calls
  for k bad records, only then. Except a 400 with a code of :data:`ACCESS_CODES`: real
  Salesforce refuses a whole call naming a field the integration user cannot see (Read
  removed by field-level security, or the field deleted) with ``INVALID_FIELD`` ("No such
  column … on sobject of type …"). Describe is asked first; the records that set a field
  it finds missing or read-only (every record of an object it cannot answer about) are
  returned apart (``no_access``) and the rest of the call is sent again. Only when describe
  finds every field written in order is the call bisected — splitting a refusal every
  record shares cost 2n−1 calls and dead-lettered every outcome.

Time: ``write(entries, may_call=...)`` asks ``may_call()`` before each call after its first
one; once it answers False, the calls not made are returned unsent (``unsent``, one list per
call), the write's verdicts so far kept. The sink uses it so that one flush never holds its
poll loop past ``max.poll.interval.ms``: a slow Salesforce (each call within
``SF_TIMEOUT_S``) and a batch bisected to the record it refuses made one flush of many calls,
the group was left, the commit failed and the batch came back, its refused record
dead-lettered again. The first call is always made, so each write makes progress; the sink
caps each unsent call's records at its size (``Entry.cap``), so a bisection goes on where it
stopped instead of starting again from the whole batch.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from common.errors import SalesforceError, SalesforceLimitError
from common.log import redact
from common.salesforce import refuses_records
from sinks.batch import Entry, RecordError
from sinks.fence import is_superseded, write_access_problem

TRANSIENT_CODES = frozenset({
    "UNABLE_TO_LOCK_ROW", "SERVER_UNAVAILABLE", "REQUEST_RUNNING_TOO_LONG",
    "ALL_OR_NONE_OPERATION_ROLLED_BACK", "REQUEST_LIMIT_EXCEEDED", "QUERY_TIMEOUT",
})

#: codes a lost permission gives every record of an object (see above), per record or, for
#: a field hidden or deleted (``INVALID_FIELD``), for the whole call
ACCESS_CODES = frozenset({
    "INSUFFICIENT_ACCESS_OR_READONLY", "NOT_FOUND", "INVALID_FIELD_FOR_INSERT_UPDATE",
    "INVALID_FIELD",
})
UNKNOWN_ACCESS = "cannot tell whether"  # how an access problem describe could not judge starts


class CollectionClient(Protocol):
    """What the writer needs of :class:`common.salesforce.SalesforceClient`."""

    def update_collection(self, records: list[dict[str, Any]], *,
                          all_or_none: bool = False) -> list[dict[str, Any]]: ...

    def describe(self, sobject: str) -> dict[str, Any]: ...


@dataclass
class WriteResult:
    acked: list[Entry] = field(default_factory=list)
    transient: list[tuple[Entry, RecordError]] = field(default_factory=list)
    permanent: list[tuple[Entry, RecordError]] = field(default_factory=list)
    superseded: list[tuple[Entry, RecordError]] = field(default_factory=list)
    #: refused for a permission the integration user lost, or that describe could not tell
    #: about: a refusal no record caused (requeued and paused on, never dead-lettered)
    no_access: list[tuple[Entry, RecordError]] = field(default_factory=list)
    access_problems: list[str] = field(default_factory=list)  # what is missing, per object
    describe_limited: bool = False  # a describe of them met the API limit
    calls: int = 0
    #: the calls not made, ``may_call`` having said no: each its records, in a list
    unsent: list[list[Entry]] = field(default_factory=list)


#: a governor limit of the org's automation (a trigger's or a Flow's): Salesforce runs a
#: call's records as one transaction per chunk of 200, so the limit is the call's size, not a
#: record's fault
_GOVERNOR_LIMIT = re.compile(r"System\.LimitException|Apex CPU time limit exceeded|"
                             r"Too many (?:SOQL queries|DML (?:rows|statements))")


def governor_limit(answer: dict[str, Any]) -> bool:
    """A record's answer failed on a governor limit (:data:`_GOVERNOR_LIMIT`)."""
    return not answer.get("success") and any(
        _GOVERNOR_LIMIT.search(str(e.get("message", ""))) for e in answer.get("errors") or [])


def is_transient(code: str, message: str = "") -> bool:
    """A record error that may pass on its own: a lock, a timeout, an outage. Automation
    that met a lock reports it inside its own code: a trigger
    (``CANNOT_INSERT_UPDATE_ACTIVATE_ENTITY``, ``…: UNABLE_TO_LOCK_ROW, unable to obtain
    exclusive access to this record``), a record-triggered Flow
    (``CANNOT_EXECUTE_FLOW_TRIGGER``, ``… the flow tried to update records:
    UNABLE_TO_LOCK_ROW: …``); any code whose message names the lock counts."""
    return code in TRANSIENT_CODES or "UNABLE_TO_LOCK_ROW" in message


class _DescribeOnce:
    """The client's describe, asked at most once per object in one write (an answer or a
    failure is remembered), for the whole-call check and the per-record one alike."""

    def __init__(self, client: CollectionClient) -> None:
        self.client = client
        self._answers: dict[str, dict[str, Any] | SalesforceError] = {}
        self._problems: dict[tuple[str, frozenset[str]], str | None] = {}

    def describe(self, sobject: str) -> dict[str, Any]:
        if sobject not in self._answers:
            try:
                self._answers[sobject] = self.client.describe(sobject)
            except SalesforceError as exc:
                self._answers[sobject] = exc
        answer = self._answers[sobject]
        if isinstance(answer, SalesforceError):
            raise answer
        return answer

    def problem(self, sobject: str, fields: Iterable[str], result: WriteResult) -> str | None:
        """:func:`sinks.fence.write_access_problem` for ``fields`` of ``sobject``; a describe
        that cannot answer is a problem too (it says nothing of the records). A problem is
        noted once in ``result.access_problems``."""
        key = (sobject, frozenset(fields))
        if key not in self._problems:
            try:
                problem = write_access_problem(self, sobject, key[1])
            except SalesforceError as exc:
                result.describe_limited |= isinstance(exc, SalesforceLimitError)
                problem = (f"{UNKNOWN_ACCESS} the integration user may still update "
                           f"{sobject}: its describe failed ({exc})")
            self._problems[key] = problem
        problem = self._problems[key]
        if problem is not None and problem not in result.access_problems:
            result.access_problems.append(problem)
        return problem


def record_error(entry: Entry, raw: dict[str, Any]) -> RecordError:
    return RecordError(entry.key, str(raw.get("statusCode") or raw.get("errorCode") or "UNKNOWN"),
                       str(raw.get("message") or ""), tuple(raw.get("fields") or ()))


class CollectionWriter:
    def __init__(self, client: CollectionClient, *, chunk_size: int = 200) -> None:
        if not 0 < chunk_size <= 200:
            raise ValueError("chunk_size must be 1..200 (sObject Collections limit)")
        self.client = client
        self.chunk_size = chunk_size
        self._may_call: Callable[[], bool] | None = None  # the write under way's (write)

    def write(self, entries: Sequence[Entry], *,
              may_call: Callable[[], bool] | None = None) -> WriteResult:
        """Send ``entries`` (any number) in chunks; raises on retryable whole-call errors.
        ``may_call``: asked before every call but the first; False leaves the rest unsent.

        When a chunk raises, the verdicts of earlier chunks are lost to the caller, which
        requeues every entry: harmless, since the updates are absolute.
        """
        result = WriteResult()
        describer = _DescribeOnce(self.client)
        self._may_call = may_call
        by_type = sorted(entries, key=lambda e: e.key.sobject)  # stable: oldest first per type
        for start in range(0, len(by_type), self.chunk_size):
            self._write_chunk(by_type[start:start + self.chunk_size], result, describer)
        self._recheck_access(result, describer)
        return result

    def _recheck_access(self, result: WriteResult, describer: _DescribeOnce) -> None:
        """Move the permanent failures a lost permission caused to ``no_access``: a code of
        :data:`ACCESS_CODES` on an object that describe — asked once per object in this
        write, for the fields those records set (:func:`sinks.fence.write_access_problem`)
        — says the integration user may no longer update or read, or that describe could
        not answer about (an outage, the API limit, a login refused: it says nothing of the
        records). Still updatable: the refusal is the record's (a sharing rule, a deleted
        record), and it stays permanent."""
        suspects: dict[str, list[tuple[Entry, RecordError]]] = {}
        for entry, error in result.permanent:
            if error.code in ACCESS_CODES:
                suspects.setdefault(entry.key.sobject, []).append((entry, error))
        held: set[int] = set()
        for sobject, refused in suspects.items():
            fields = {name for entry, _error in refused for name in entry.fields}
            if describer.problem(sobject, fields, result) is not None:
                held.update(id(entry) for entry, _error in refused)
        if held:
            result.no_access += [(e, err) for e, err in result.permanent if id(e) in held]
            result.permanent = [(e, err) for e, err in result.permanent if id(e) not in held]

    def _write_chunk(self, chunk: list[Entry], result: WriteResult, describer: _DescribeOnce,
                     *, asked: bool = False) -> None:
        """One call; a 400 for it is bisected (``asked``: describe already found every
        field of ``chunk`` in order, so an access code is a record's)."""
        if result.calls and self._may_call is not None and not self._may_call():
            result.unsent.append(chunk)
            return
        result.calls += 1
        try:
            answers = self.client.update_collection([e.payload() for e in chunk],
                                                    all_or_none=False)
        except SalesforceError as exc:
            if exc.retryable or not refuses_records(exc):
                raise
            if exc.error_code in ACCESS_CODES and not asked:
                held = self._hold_refused(chunk, exc, result, describer)
                rest = [entry for entry in chunk if id(entry) not in held]
                if held:
                    if rest:  # what describe finds in order goes again without them
                        self._write_chunk(rest, result, describer, asked=True)
                    return
                asked = True
            if len(chunk) == 1:
                code = exc.error_code or type(exc).__name__
                result.permanent.append((chunk[0], RecordError(chunk[0].key, code, str(exc))))
                return
            middle = len(chunk) // 2
            self._write_chunk(chunk[:middle], result, describer, asked=asked)
            self._write_chunk(chunk[middle:], result, describer, asked=asked)
            return
        self._sort_answers(chunk, answers, result)

    @staticmethod
    def _hold_refused(chunk: list[Entry], exc: SalesforceError, result: WriteResult,
                      describer: _DescribeOnce) -> set[int]:
        """A whole call refused with an access code (``INVALID_FIELD``: a field hidden or
        deleted): the records whose object or fields describe says the integration user may
        no longer update (or that it cannot answer about) go to ``no_access`` with that
        error — a refusal no record caused. Returns their ids (empty: describe finds every
        field in order, the refusal is a record's)."""
        held: set[int] = set()
        for entry in chunk:
            if describer.problem(entry.key.sobject, entry.fields, result) is not None:
                held.add(id(entry))
                code = exc.error_code or type(exc).__name__
                result.no_access.append((entry, RecordError(entry.key, code, str(exc))))
        return held

    @staticmethod
    def _sort_answers(chunk: list[Entry], answers: list[dict[str, Any]],
                      result: WriteResult) -> None:
        if len(answers) != len(chunk):
            raise SalesforceError(f"composite/sobjects answered {len(answers)} results for "
                                  f"{len(chunk)} records", retryable=True)
        limited = [a for a in answers if governor_limit(a)]
        # two or more: one record's own answer naming a limit beside successes is its own
        # (its automation alone exceeds it), dead-lettered as before
        if len(limited) > 1:
            # records of the call refused by a governor limit: the call's (its records run
            # as one transaction), retried as a whole-call failure (the sink then sends
            # fewer records per call, down to one alone; the updates are absolute, so the
            # others sent again change nothing) instead of dead-lettering records that pass
            # in smaller calls
            first = next(e for e in limited[0].get("errors") or [])
            raise SalesforceError(f"{len(limited)} record(s) of a call of {len(chunk)} "
                                  f"failed on a governor limit of the org's automation: "
                                  f"{redact(str(first.get('message', '')))[:200]}", retryable=True)
        for entry, answer in zip(chunk, answers, strict=True):
            if answer.get("success"):
                result.acked.append(entry)
                continue
            errors = [record_error(entry, e) for e in answer.get("errors")
                      or [{"statusCode": "UNKNOWN", "message": str(answer)}]]
            fenced = next((e for e in errors if is_superseded(e.code, e.message)), None)
            if fenced is not None:
                result.superseded.append((entry, fenced))
            elif all(is_transient(e.code, e.message) for e in errors):
                result.transient.append((entry, errors[0]))
            else:
                result.permanent.append((entry, next(e for e in errors
                                                     if not is_transient(e.code, e.message))))
