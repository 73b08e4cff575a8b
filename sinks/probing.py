"""Probing: a batch that fails as a whole the same way every time must not block everything
behind it — a 200-record PATCH that always times out because the org's automation is slow
for big calls, or one record that provokes a 5xx every time.

Each record counts the retryable whole-call failures in a row of the calls it was in — not
``REQUEST_LIMIT_EXCEEDED``, not an auth refusal, not a refusal no record caused, none of
which a smaller call can cure (the sink decides which failures are *suspect* and calls
:meth:`Probing.shrink` or :meth:`Probing.blame` only for those). When the records of a call
of n have failed ``SHRINK_AFTER`` calls in a row, each of them gets a cap of n // 2 (down to
one): the next call takes at most that many, the capped batch first — a bisection of that
batch only. Nothing else shrinks: other records and records that arrive later go at the
full ``SINK_BATCH_SIZE``, and a capped record leaves once written. So calls that fail at
random, whatever they hold (a degraded org failing half its calls), cost at most a halving
of the few batches that met two failures in a row, never the size of every call.

A record whose call alone (cap 1) failed is *isolated*: from then on it is only sent alone,
after the others (its own backoff runs past the pause), so the rest flows around it. Its
failures count as attempts (``SINK_MAX_ATTEMPTS``, then a dead letter with the error) only
when, since its previous lone failure, Salesforce answered at least ``BLAME_ANSWERED`` calls
and ``BLAME_RATIO`` times as many as it failed: proof that the record, not Salesforce, is
the problem. Otherwise nothing is counted and the sink pauses as for an outage: during an
outage no call is answered, and an org failing calls at random fails too many of them, so
nothing is dead-lettered, however long it lasts (minutes or days); it only leaves a few
capped or isolated records, each sent in its small call once Salesforce is back.

The per-record state lives on :class:`sinks.batch.Entry` (``call_failures``, ``cap``,
``lone_failures`` and the two marks) so that it survives requeueing and merging; this
module holds the sink-wide counts and the rules.
"""

from __future__ import annotations

import logging

from sinks.batch import Entry

log = logging.getLogger(__name__)
SHRINK_AFTER = 2  # retryable whole-call failures in a row before a batch's calls halve
BLAME_ANSWERED = 3  # a lone failure counts: this many calls answered since its last one,
BLAME_RATIO = 3  # and this many times as many answered as failed


class Probing:
    """The sink's counts of answered and failed calls, and the shrink and blame rules."""

    def __init__(self) -> None:
        self.answered = 0  # calls Salesforce answered (a lone failure's "others went" test)
        self.failed = 0  # whole calls that failed, of any kind (ditto: "Salesforce was fine")

    def call_answered(self) -> None:
        self.answered += 1

    def call_failed(self) -> None:
        """Counted after :meth:`blame` for the same call (its window starts after it)."""
        self.failed += 1

    def shrink(self, entries: list[Entry]) -> None:
        """A suspect failure of the whole call of ``entries``: those that have now failed
        ``SHRINK_AFTER`` calls in a row go in calls of half as many records from now on
        (down to one). Only they: other records, and records that arrive later, keep the
        full batch size, so failures at random that any call may meet shrink nothing for
        long (a success acknowledges the records)."""
        n = len(entries)
        shrunk = 0
        for entry in entries:
            entry.call_failures += 1
            if entry.call_failures >= SHRINK_AFTER:
                entry.call_failures = 0
                entry.cap = max(1, n // 2)
                shrunk += 1
        if shrunk:
            log.info("calls of %d records keep failing; trying %d", n, max(1, n // 2),
                     extra={"count": shrunk})

    def blame(self, entry: Entry) -> bool:
        """The call of ``entry`` alone (its cap is 1) failed suspectly. The record is
        isolated from now on (sent alone, after the others). True when, since its previous
        lone failure, Salesforce answered at least ``BLAME_ANSWERED`` calls and
        ``BLAME_RATIO`` times as many as failed: the record, not Salesforce, is at fault,
        and the failure counts as an attempt. False: Salesforce may be failing calls
        whatever they hold (an outage, a degraded org); nothing is counted."""
        answered = self.answered - entry.answered_mark
        failed = self.failed - entry.failed_mark
        blamed = (entry.isolated and answered >= BLAME_ANSWERED
                  and answered >= BLAME_RATIO * failed)
        entry.lone_failures += 1
        entry.answered_mark = self.answered
        entry.failed_mark = self.failed + 1  # the window starts after this failure
        return blamed
