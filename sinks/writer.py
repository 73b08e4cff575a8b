"""One flush: the pending entries → ``PATCH composite/sobjects`` calls → per-record verdicts.

Per-record errors (``allOrNone: false``) are sorted into:

* superseded — the fence's validation rule refused the record
  (``FIELD_CUSTOM_VALIDATION_EXCEPTION`` with ``SFPROV_SUPERSEDED`` in its message, see
  :mod:`sinks.fence`): Salesforce holds a newer outcome, so there is nothing to write and
  nothing to retry or dead-letter. It wins over any other error of the same record;
* transient — :data:`TRANSIENT_CODES` (``UNABLE_TO_LOCK_ROW`` and kin), or a trigger's
  ``CANNOT_INSERT_UPDATE_ACTIVATE_ENTITY`` whose message carries ``UNABLE_TO_LOCK_ROW`` (lock
  contention inside an Order or Opportunity trigger, :func:`is_transient`): the record goes
  back to the pending map with a backoff;
* permanent — everything else (``INVALID_FIELD``, ``ENTITY_IS_DELETED``,
  ``FIELD_CUSTOM_VALIDATION_EXCEPTION``, ``INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST``,
  ``NOT_FOUND``, ``MALFORMED_ID``, ...): dead-lettered, the rest of the batch proceeds.
  Unknown codes count as permanent so one odd record can never stall a partition forever.

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
  API version) — failing the records would dead-letter every outcome while the credentials
  are wrong;
* a 400 for the request cannot say which record caused it, so the batch is bisected until
  the culprit stands alone and is failed with that error. The cost is O(k·log n) extra calls
  for k bad records, only then.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from common.errors import SalesforceError
from common.salesforce import refuses_records
from sinks.batch import Entry, RecordError
from sinks.fence import is_superseded

TRANSIENT_CODES = frozenset({
    "UNABLE_TO_LOCK_ROW", "SERVER_UNAVAILABLE", "REQUEST_RUNNING_TOO_LONG",
    "ALL_OR_NONE_OPERATION_ROLLED_BACK", "REQUEST_LIMIT_EXCEEDED", "QUERY_TIMEOUT",
})


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
    calls: int = 0


def is_transient(code: str, message: str = "") -> bool:
    """A record error that may pass on its own: a lock, a timeout, an outage. A trigger that
    met a lock reports it inside its own code (``CANNOT_INSERT_UPDATE_ACTIVATE_ENTITY``,
    ``…: UNABLE_TO_LOCK_ROW, unable to obtain exclusive access to this record``)."""
    return code in TRANSIENT_CODES or (code == "CANNOT_INSERT_UPDATE_ACTIVATE_ENTITY"
                                       and "UNABLE_TO_LOCK_ROW" in message)


def record_error(entry: Entry, raw: dict[str, Any]) -> RecordError:
    return RecordError(entry.key, str(raw.get("statusCode") or raw.get("errorCode") or "UNKNOWN"),
                       str(raw.get("message") or ""), tuple(raw.get("fields") or ()))


class CollectionWriter:
    def __init__(self, client: CollectionClient, *, chunk_size: int = 200) -> None:
        if not 0 < chunk_size <= 200:
            raise ValueError("chunk_size must be 1..200 (sObject Collections limit)")
        self.client = client
        self.chunk_size = chunk_size

    def write(self, entries: Sequence[Entry]) -> WriteResult:
        """Send ``entries`` (any number) in chunks; raises on retryable whole-call errors.

        When a chunk raises, the verdicts of earlier chunks are lost to the caller, which
        requeues every entry: harmless, since the updates are absolute.
        """
        result = WriteResult()
        by_type = sorted(entries, key=lambda e: e.key.sobject)  # stable: oldest first per type
        for start in range(0, len(by_type), self.chunk_size):
            self._write_chunk(by_type[start:start + self.chunk_size], result)
        return result

    def _write_chunk(self, chunk: list[Entry], result: WriteResult) -> None:
        result.calls += 1
        try:
            answers = self.client.update_collection([e.payload() for e in chunk],
                                                    all_or_none=False)
        except SalesforceError as exc:
            if exc.retryable or not refuses_records(exc):
                raise
            if len(chunk) == 1:
                code = exc.error_code or type(exc).__name__
                result.permanent.append((chunk[0], RecordError(chunk[0].key, code, str(exc))))
                return
            middle = len(chunk) // 2
            self._write_chunk(chunk[:middle], result)
            self._write_chunk(chunk[middle:], result)
            return
        if len(answers) != len(chunk):
            raise SalesforceError(f"composite/sobjects answered {len(answers)} results for "
                                  f"{len(chunk)} records", retryable=True)
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
