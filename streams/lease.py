"""The ownership lease: may this worker write to WHMCS for an event of partition P *now*?

The consumer group decides who owns a requests partition, but a member only learns that it
lost a partition when it next talks to the coordinator. A worker that is paused (GC, a
frozen VM, CPU throttling) or cut off from the brokers past its session timeout keeps
running its old work when it resumes, while the group has already handed its partitions to
another member that redelivers the same events. The lease is the worker's own answer,
checked right before every WHMCS write (``AddOrder``, ``AcceptOrder``, ``CancelOrder`` and
each retry of them):

* **the partition is owned, continuously since the event was taken** — ``owned[p]`` is the
  first generation of the unbroken run of generations in which this member held ``p``. An
  event taken in generation ``g`` may be acted on only while ``owned[p] <= g``. Losing ``p``
  for one generation (paused, kicked, another member took it) breaks the run for good, even
  if ``p`` comes back: the other member may have provisioned the event meanwhile;
* **no rebalance is under way** — from the moment the member learns of a rebalance
  (revocation, a heartbeat answered ``REBALANCE_IN_PROGRESS``) until it is assigned again,
  nothing is written;
* **membership is known to be true now** — the coordinator accepted a heartbeat (or the
  SyncGroup of this generation) *sent* at ``renewed_at``, so it kept this member until at
  least ``renewed_at + session_timeout``. The lease lasts until
  ``renewed_at + session_timeout - margin``; the margin absorbs the time between the check
  and the bytes leaving the process, and clock-rate differences.

Why it is enough: the coordinator moves a partition to another member only after this
member revoked it (it then knows) or after its session expired (``session_timeout`` after
the last heartbeat the coordinator received, which is after ``renewed_at``). Either way this
member's lease ended before the new owner was assigned, so every WHMCS write this member
can still make was *sent* before the new owner exists. The new owner waits out the WHMCS
timeout of such a write (plus a grace) before it looks the Order up (see
:mod:`streams.provision`), and the intent records, durable before each write, say until
when its writer could send (:attr:`LeaseCheck.valid_until_wall`).

Static membership (``WORKER_INSTANCE_ID``) breaks the first premise: the coordinator hands
the partitions of an instance id to a process that joins under it at once, in the same
generation. A member the coordinator forgot (:meth:`OwnershipLease.member_reset`) writes
nothing until assigned again, and one given a generation back that it held before the reset
owns nothing in it (the worker exits: :attr:`OwnershipLease.regranted`). What stays open is
the time until the replaced process hears of it (its next heartbeat): the README says to
run one live process per instance id.

A residue no client-side check can close: a pause that lands *between* the check and the
write syscall of the same call (microseconds of CPU). The last line against it is the
compensation in :meth:`streams.provision.Provisioner.lookup`.

The state is fed from the consumer's thread (:mod:`streams.faust_seam`) and read from the
event loop's thread; every method takes the lock. Time is the lease clock,
:func:`common.clock.lease_clock` (CLOCK_BOOTTIME on Linux: a pause advances it, and so does a
host suspend or hibernation, which ``time.monotonic`` does not count), injectable for tests;
the heartbeat send times and the send deadlines checked by the WHMCS client are on it too.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from common.clock import lease_clock
from common.errors import PipelineError

if TYPE_CHECKING:
    from streams.provision import Fence
    from streams.state import Intent, OrderState

RENEW_BEFORE_MS = 1000  # renew an intent's lease when less than this is left


@dataclass(frozen=True)
class LeaseCheck:
    """The answer of :meth:`OwnershipLease.check`. ``valid_until`` is seconds on the lease's
    clock (:func:`common.clock.lease_clock`), ``valid_until_wall`` the same instant as epoch
    seconds (for intents read by others)."""

    ok: bool
    reason: str = ""
    valid_until: float = 0.0
    valid_until_wall: float = 0.0
    # not ok, and for good: the partition is not ours in the current generation, or changed
    # hands since the event was taken. Otherwise (a rebalance under way, no heartbeat
    # accepted lately) it may come back: the caller waits and asks again.
    lost: bool = False


_LEFT = LeaseCheck(False, "this worker left the group (stopping)", lost=True)


class Fenced(PipelineError):
    """This worker may no longer write to WHMCS for an Order: the Order's partition is not
    its own any more (:attr:`LeaseCheck.lost`). The Order is left to the partition's new
    owner — no call, no outcome, no ack."""

    retryable = False

    def __init__(self, check: LeaseCheck, *, stage: str = "") -> None:
        super().__init__(f"fenced before {stage or 'a WHMCS write'}: {check.reason}")
        self.check = check
        self.stage = stage


class OwnershipLease:
    """See the module docstring. ``session_timeout_s - margin_s`` must stay positive."""

    def __init__(self, *, session_timeout_s: float, margin_s: float,
                 clock: Callable[[], float] = lease_clock,
                 wall: Callable[[], float] = time.time) -> None:
        if margin_s >= session_timeout_s:
            raise ValueError("the lease margin must be shorter than the session timeout")
        self.length_s = session_timeout_s - margin_s
        self._clock, self._wall = clock, wall
        self._lock = threading.Lock()
        self._generation: int | None = None  # the stable generation we are in, if any
        self._last_generation: int | None = None  # the last one we were assigned in
        self._owned: dict[int, int] = {}  # partition → first generation of the unbroken run
        self._renewed_at: float | None = None
        self._synced: tuple[int, float] | None = None  # (generation, SyncGroup send time)
        self.assigned_at: float | None = None  # lease-clock time of the last assignment
        self._left = False  # left the group (stopping): nothing is ours until assigned again
        # the coordinator forgot this member (its member id reset) when it was in this
        # generation: one at or below it given back (a static member's rejoin) may have been
        # another process's meanwhile (:meth:`member_reset`)
        self._reset_through = -1
        self.regranted: int | None = None  # such a generation was given back: never ours

    # -- fed by the consumer's thread ---------------------------------------------------

    def rebalancing(self) -> None:
        """A rebalance started (revocation, or the coordinator said so): stop writing."""
        with self._lock:
            self._generation = None
            self._renewed_at = None

    def synced(self, generation: int, sent_at: float) -> None:
        """SyncGroup of ``generation`` sent at ``sent_at`` succeeded."""
        with self._lock:
            self._synced = (generation, sent_at)

    def member_reset(self) -> None:
        """The group forgot this member (aiokafka reset its member id: a heartbeat or commit
        answered ``UNKNOWN_MEMBER_ID``/``ILLEGAL_GENERATION``, or it gave up its membership
        itself). Nothing is written until assigned again, and a generation at or below the
        one it was in is never ours again: with static membership (``WORKER_INSTANCE_ID``)
        the coordinator gives a member that rejoins under its instance id the *same*
        generation back — also after another process under that id held its partitions
        meanwhile, without the session expiry the lease counts on. Its events of that
        generation would pass :meth:`check`."""
        with self._lock:
            self._generation = None
            self._renewed_at = None
            if self._last_generation is not None:
                self._reset_through = max(self._reset_through, self._last_generation)

    def assigned(self, partitions: Iterable[int], generation: int) -> None:
        """Assigned ``partitions`` in ``generation`` (after the SyncGroup). A generation at
        or below one this member was reset in (:meth:`member_reset`) owns nothing, for good,
        and is kept in :attr:`regranted`: the worker exits, so that a new process, with no
        event of its own taken before, joins."""
        with self._lock:
            follows = self._last_generation is not None and \
                generation == self._last_generation + 1
            owned = {}
            for p in partitions:
                since = self._owned.get(p) if follows else None
                owned[p] = since if since is not None else generation
            if generation <= self._reset_through:
                owned, self.regranted = {}, generation
            self._owned = owned
            self._generation = self._last_generation = generation
            self._left = False
            self._renewed_at = self._synced[1] if self._synced and \
                self._synced[0] == generation else None
            self.assigned_at = self._clock()

    def heartbeat(self, generation: int, sent_at: float, *, accepted: bool,
                  rebalance: bool = False) -> None:
        """A heartbeat of ``generation`` sent at ``sent_at`` was answered. ``accepted``:
        without error; ``rebalance``: the coordinator asked us to rejoin."""
        with self._lock:
            if rebalance:
                self._generation = None
                self._renewed_at = None
                return
            if accepted and generation == self._generation:
                self._renewed_at = max(self._renewed_at or sent_at, sent_at)

    def lost(self) -> None:
        """Membership lost (left the group, consumer stopped): nothing is owned, for good —
        every check fails as :attr:`LeaseCheck.lost` (what waits for the lease is fenced,
        not left waiting), and a later assignment starts a new run of ownership. Called by
        the worker when it stops (:meth:`streams.app.Worker._leaving`): faust's stop calls
        no revoke listener and its LeaveGroup passes no heartbeat hook, so the lease would
        otherwise hold for up to a session after the last heartbeat while the partitions
        are restored elsewhere."""
        with self._lock:
            self._generation = None
            self._renewed_at = None
            self._owned = {}
            self._left = True

    # -- read by the event loop ---------------------------------------------------------

    @property
    def generation(self) -> int | None:
        with self._lock:
            return self._generation

    @property
    def last_generation(self) -> int | None:
        """The generation this member was last assigned in, kept through a rebalance (the
        stamp on its table records: decision 0016)."""
        with self._lock:
            return self._last_generation

    def owned_partitions(self) -> set[int]:
        with self._lock:
            return set(self._owned) if self._generation is not None else set()

    def held_since(self, partition: int, generation: int) -> bool:
        """This member holds ``partition`` in the current generation and has held it
        without a break since ``generation`` (a table restore asks: its store is then the
        partition's truth, decision 0016)."""
        with self._lock:
            since = self._owned.get(partition)
            return self._generation is not None and since is not None and since <= generation

    def check(self, partition: int, generation: int) -> LeaseCheck:
        """May this worker write to WHMCS now for an event of ``partition`` taken in
        ``generation``?"""
        now = self._clock()
        with self._lock:
            current, since, renewed = self._generation, self._owned.get(partition), \
                self._renewed_at
            left = self._left
        if left:
            return _LEFT
        if current is None:
            return LeaseCheck(False, "a rebalance is under way (not assigned)")
        if since is None:
            return LeaseCheck(False, f"partition {partition} is not assigned to this worker "
                                     f"in generation {current}", lost=True)
        if since > generation:
            return LeaseCheck(False, f"partition {partition} changed hands since generation "
                                     f"{generation} (owned again since {since})", lost=True)
        if renewed is None:
            return LeaseCheck(False, f"no heartbeat accepted yet in generation {current}")
        until = renewed + self.length_s
        if now >= until:
            return LeaseCheck(False, f"lease expired {now - until:.1f} s ago: the last "
                                     f"accepted heartbeat was sent {now - renewed:.1f} s ago")
        return LeaseCheck(True, "", until, self._wall() + (until - now))

    def current(self, partition: int) -> LeaseCheck:
        """:meth:`check` for work not tied to an event (the sweep): the current generation."""
        with self._lock:
            generation, left = self._generation, self._left
        if left or generation is None:
            return _LEFT if left else \
                LeaseCheck(False, "a rebalance is under way (not assigned)")
        return self.check(partition, generation)


async def hold(lease: OwnershipLease, partition: int, generation: int, *, stage: str,
               poll_s: float = 0.05, on_wait: Callable[[LeaseCheck], None] | None = None
               ) -> LeaseCheck:
    """The lease for an event of ``partition`` taken in ``generation``, now: returns a valid
    check, waits while it may come back (a rebalance under way, heartbeats not accepted
    lately — a broker away, this process just resumed), and raises :class:`Fenced` once the
    partition is lost. ``on_wait`` is told once when the wait starts."""
    check = lease.check(partition, generation)
    told = False
    while not check.ok:
        if check.lost:
            raise Fenced(check, stage=stage)
        if not told and on_wait is not None:
            on_wait(check)
            told = True
        await asyncio.sleep(poll_s)
        check = lease.check(partition, generation)
    return check


# -- the intent's lease --------------------------------------------------------------------

#: The ownership lease of one piece of work (an event, a sweep job), asked with the stage
#: about to run: a valid check, or raises :class:`Fenced`; None when no ownership lease
#: governs the work (unit tests and benchmarks).
Own = Callable[[str], Awaitable["LeaseCheck | None"]]


class IntentLease:
    """Until when the writer of a pending intent may send to WHMCS: its ``lease_until``,
    durable before each write, and the send deadline of that write. Whoever resumes the
    intent (a redelivered event, a sweep — this worker's or the partition's next owner's)
    waits until ``lease_until`` + the WHMCS timeout + a grace before it looks the Order up
    (:meth:`streams.provision.ProvisionPolicy.settle_at_ms`), so no write of this writer can
    still be running then. Shared by the event path (:class:`streams.handler.EventHandler`)
    and the sweep (:class:`streams.recovery.Sweeper`): every WHMCS write either makes
    (``AddOrder``, ``AcceptOrder``, ``CancelOrder``, each retry) goes through :meth:`fence`."""

    def __init__(self, state: OrderState, durable: Callable[[], Awaitable[None]], *,
                 writer: str, length_s: float, clock_ms: Callable[[], int]) -> None:
        self.state, self.durable, self.writer = state, durable, writer
        self.length_ms = int(length_s * 1000)
        self._clock = clock_ms

    def until(self, check: LeaseCheck | None) -> int:
        """An intent's lease from now: as long as the group lease, at most ``length_s``."""
        now = self._clock()
        if check is None:
            return now + self.length_ms
        return min(int(check.valid_until_wall * 1000), now + self.length_ms)

    def fence(self, own: Own, held: list[Intent]) -> Fence:
        """The :class:`~streams.provision.Fence` of the writes made for ``held[-1]`` (the
        pending intent as last written; renewals are appended). Awaited right before each
        WHMCS write: the group lease holds (``own``), and the durable intent says this
        writer may still send — else it is renewed (this writer, ``lease_until`` =
        :meth:`until`), written and made durable first, so a new owner that waits out the
        intent's ``lease_until`` cannot meet a late write of ours. Asked ``queued`` while
        the write waits in line for a WHMCS slot, it renews there what the wait for the
        slots wore down, so the slot is not held by a flush. Returns the send deadline (lease
        clock seconds, as the transport checks it): the group lease's end or the intent's,
        whichever is first."""
        async def fence(action: str, *, queued: bool = False) -> float | None:
            check = await own(action)
            intent = held[-1]
            if (intent.lease_until or 0) - self._clock() < RENEW_BEFORE_MS:
                intent = intent.renewed(self.until(check), writer=self.writer)
                held.append(intent)
                self.state.set_intent(intent)
                await self.durable()
                check = await own(action)  # the flush took time
            if queued or check is None:
                return None
            until_ms = (intent.lease_until if intent.lease_until else
                        int(check.valid_until_wall * 1000))
            return min(check.valid_until,
                       lease_clock() + (until_ms - self._clock()) / 1000)
        return fence
