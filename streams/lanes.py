"""Per-Order lanes: each Order's events strictly in order, different Orders independent.

:meth:`Lanes.admit` takes an event into its Order's lane and returns at once — unless the
window is full: at most ``max_in_flight`` events are admitted and not yet finished
(backpressure: the agent stops taking events, faust stops fetching). A lane runs its
Order's work one item at a time and ends when it is empty; an Order whose WHMCS call hangs
holds its own lane and its partition's commit point (:mod:`streams.checkpoint`), nothing
else — later Orders on the same partition are decided, provisioned and sent meanwhile. A
partition whose uncommitted span grows past ``partition_window`` offsets (one hung Order
and many finished after it) is paused until it shrinks to half (memory bound); while its
events still come past the window, the pause is asked for again (at most once a second). A
dead letter (:meth:`Lanes.run_alone`) needs no lane but is admitted the same way — it
waits for room, counts in the window and its partition's span, holds the commit point until
the broker took it, and a stop (:meth:`Lanes.drain`) waits for it: a run of undecodable
records while the dead-letter topic refuses writes must not take events in without bound.

Every admitted event ends in exactly one of: **finished** (the handler acknowledged its
outcome or dead letter, or it needed none — the checkpoint may commit past it), **fenced**
(the Order's partition went to another worker: released, never committed past), or
**released** by :meth:`Lanes.revoke` (a rebalance: faust redelivers it from the committed
offset). An event of a revoked generation that reaches :meth:`Lanes.admit` after the revoke
— the agent was waiting for room with the rest of its chunk when the rebalance came — is
released at once, not run: faust's rebalance waits for every message it handed out
(``wait_empty``), and such an event would only wait for a lease the rebalance cannot give
back before it ends (a chaos run saw a worker held in the rebalance until the group expelled
it, 75 s later, its partitions unprocessed meanwhile). The revoke names the generation it
revokes (the one faust stamps on what it fetches now), so this holds too for a generation
none of whose events reached the lanes before the revoke — the agent was waiting for the
decode of its first chunk (a schema registry lookup; the chunk's messages, held by the agent
meanwhile, are released by the revoke too: :meth:`Lanes.taken`). Faust itself never acknowledges a
requests message: the worker releases it (:meth:`streams.faust_seam.ConsumerSeam.release`)
and commits through its checkpoint.

The sweep's per-Order work runs in the Order's lane too (:meth:`Lanes.exclusive`), so it
never interleaves with the Order's events; and it asks here where the group's commit of a
partition stands (:meth:`Lanes.committed_offsets`): an event not committed past is still to
be delivered, and resumes its Order's pending attempt itself.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from streams.checkpoint import Checkpoint

log = logging.getLogger(__name__)


@dataclass
class Admitted:
    """One event in the worker: where it came from and what to call to handle it."""

    partition: int
    offset: int
    message: Any  # faust's message, released when the event leaves the worker
    work: Callable[[], Awaitable[bool]]  # True: finished; False: fenced
    generation: int | None = None  # the consumer group generation it was fetched in
    epoch: int = 0
    done: bool = False
    result: str = ""  # finished | fenced | released, once it left


Job = Admitted | Callable[[], Awaitable[None]]


class Lanes:
    repause_interval_s = 1.0  # a paused partition's pause asked for again at most this often

    def __init__(self, checkpoint: Checkpoint, release: Callable[[Any], None], *,
                 max_in_flight: int = 500, partition_window: int = 10_000,
                 pause: Callable[[set[int]], None] = lambda _p: None,
                 resume: Callable[[set[int]], None] = lambda _p: None,
                 on_leave: Callable[[Admitted], None] = lambda _item: None,
                 on_crash: Callable[[BaseException], None] = lambda _exc: None) -> None:
        self.checkpoint, self._release = checkpoint, release
        self.max_in_flight, self.partition_window = max_in_flight, partition_window
        self._pause, self._resume, self._on_leave = pause, resume, on_leave
        self._on_crash = on_crash
        self._lanes: dict[str, deque[Job]] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._alone: set[asyncio.Task[None]] = set()  # dead letters being sent (run_alone)
        self._events: dict[int, Admitted] = {}  # id() → admitted events not yet done
        self._room = asyncio.Event()
        self._room.set()
        self._paused: set[int] = set()
        self._paused_asked: dict[int, float] = {}  # partition → when its pause was asked for
        self.crashed: BaseException | None = None
        self._newest_generation = -1  # of the events admitted so far
        self._revoked_through = -1  # events of this generation and older were revoked
        self._taken: list[tuple[Any, int | None]] = []  # (message, generation) not admitted

    # -- taking events in ------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        return len(self._events)

    def taken(self, messages: Iterable[tuple[Any, int | None]]) -> None:
        """The agent holds these messages (each with the generation it was fetched in) and
        has not handed their events in yet — it waits for their decode (a schema registry
        lookup, the registry unreachable): a revoke of their generation releases them at
        once. Called again with nothing once they are handed in (or given up)."""
        self._taken = list(messages)

    def busy(self, order_id: str) -> bool:
        return order_id in self._lanes

    async def committed_offsets(self, partitions: Iterable[int]) -> dict[int, int]:
        """partition → the group's committed offset of the requests topic (the partition's
        first offset when none was committed): the first record a consumer of the group is
        given next (:meth:`streams.checkpoint.Checkpoint.committed_offsets`)."""
        return await self.checkpoint.committed_offsets(partitions)

    async def admit(self, order_id: str, item: Admitted) -> None:
        """Into ``order_id``'s lane; waits while the window is full."""
        if await self._take(item):
            self._enqueue(order_id, item)

    async def run_alone(self, item: Admitted) -> None:
        """An event that needs no lane (a dead letter): admitted as :meth:`admit` admits —
        it waits while the window is full, counts in its partition's span (and pauses it),
        holds the commit point until its work finished — and handled on its own, in a task
        :meth:`drain` waits for."""
        if await self._take(item):
            task = asyncio.ensure_future(self._guarded(self._run_one(item)))
            self._alone.add(task)
            task.add_done_callback(self._alone.discard)

    async def _take(self, item: Admitted) -> bool:
        """Take ``item`` into the window once there is room (the agent waits here: faust
        stops fetching); False when it was released instead (its generation was revoked).
        Raises what crashed the lanes."""
        while len(self._events) >= self.max_in_flight:
            self._room.clear()
            await self._room.wait()
        if self.crashed is not None:
            raise self.crashed
        if self._revoked(item):
            return False
        item.epoch = self.checkpoint.admitted(item.partition, item.offset)
        self._events[id(item)] = item
        if self.checkpoint.span(item.partition) > self.partition_window:
            self._hold_paused(item.partition)
        return True

    def _hold_paused(self, partition: int) -> None:
        """Pause ``partition`` (its span is past the window) — and, while its events keep
        coming past the window, ask again at most once per ``repause_interval_s``: a pause
        the consumer undid behind the lanes' back (faust's buffer-pressure bookkeeping did,
        before the seam kept it) is taken up again, not left to grow the span without
        bound. Events faust fetched before the pause held come too; asking again costs one
        idempotent call per interval."""
        now = time.monotonic()
        if partition not in self._paused:
            self._paused.add(partition)
            log.info("partition %d paused: %d offsets uncommitted behind an unfinished event",
                     partition, self.checkpoint.span(partition))
        elif now - self._paused_asked.get(partition, -math.inf) < self.repause_interval_s:
            return
        else:
            log.debug("partition %d: still taking events past the window while paused; "
                      "pause asked for again", partition)
        self._paused_asked[partition] = now
        self._pause({partition})

    def revoked(self, generation: int | None) -> bool:
        """Events fetched in ``generation`` were revoked: released, never run (see the
        module). A generation not known (None, negative) is never revoked."""
        return generation is not None and 0 <= generation <= self._revoked_through

    def _revoked(self, item: Admitted) -> bool:
        """Release ``item`` at once if its generation was revoked (see the module)."""
        generation = item.generation
        if generation is None or generation < 0:  # not known: nothing to tell it by
            return False
        if generation <= self._revoked_through:
            self._leave(item, "released")
            return True
        self._newest_generation = max(self._newest_generation, generation)
        return False

    async def _guarded(self, work: Awaitable[None]) -> None:
        try:
            await work
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001 - a table not durable: stop everything
            self._crash(exc)

    def _crash(self, exc: BaseException) -> None:
        if self.crashed is None:
            self.crashed = exc
            log.critical("handling an event failed in a way the worker cannot survive "
                         "(%s); stopping without acknowledging", exc, exc_info=exc)
            self._on_crash(exc)

    async def exclusive(self, order_id: str, job: Callable[[], Awaitable[None]]) -> None:
        """Run ``job`` in ``order_id``'s lane (after what is queued there) and wait for it."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def run() -> None:
            try:
                await job()
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                if not done.done():
                    done.set_exception(exc)
            else:
                if not done.done():
                    done.set_result(None)
        self._enqueue(order_id, run)
        await done

    def _enqueue(self, order_id: str, job: Job) -> None:
        lane = self._lanes.get(order_id)
        if lane is None:
            lane = self._lanes[order_id] = deque()
            lane.append(job)
            self._tasks[order_id] = asyncio.ensure_future(self._run_lane(order_id, lane))
        else:
            lane.append(job)

    # -- running the lanes -----------------------------------------------------------------

    async def _run_lane(self, order_id: str, lane: deque[Job]) -> None:
        try:
            while lane:
                job = lane[0]
                if isinstance(job, Admitted):
                    await self._run_one(job)
                else:
                    await job()
                if lane and lane[0] is job:
                    lane.popleft()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001 - a table not durable: stop everything
            self._crash(exc)
        finally:
            if self._lanes.get(order_id) is lane:
                del self._lanes[order_id]
                self._tasks.pop(order_id, None)

    async def _run_one(self, item: Admitted) -> None:
        if item.done:
            return  # released by a rebalance before it started
        finished = await item.work()
        if item.done:
            return  # released by a rebalance while it ran: its redelivered copy counts
        if finished:
            self.checkpoint.finished(item.partition, item.offset, item.epoch)
        self._leave(item, "finished" if finished else "fenced")

    def _leave(self, item: Admitted, result: str) -> None:
        item.done, item.result = True, result
        self._release(item.message)
        self._events.pop(id(item), None)
        self._on_leave(item)
        if self._paused and item.partition in self._paused and \
                self.checkpoint.span(item.partition) <= self.partition_window // 2:
            self._paused.discard(item.partition)
            self._resume({item.partition})
        if len(self._events) < self.max_in_flight:
            self._room.set()

    def committed(self) -> None:
        """After a commit: resume each paused partition whose span shrank to half the window.
        An event's leave cannot always see it shrink — the span runs from the commit point,
        so when the hung event the partition waited on leaves last, the span is still wide
        until the next commit, and no event of a paused partition leaves after that."""
        sought, self.checkpoint.sought_back = self.checkpoint.sought_back, set()
        for partition in [p for p in self._paused
                          if self.checkpoint.span(p) <= self.partition_window // 2]:
            self._paused.discard(partition)
            log.info("partition %d resumed: its commit point moved past the events that "
                     "finished while it was paused", partition)
            self._resume({partition})
        for partition in sorted(sought & self._paused):
            # the commit was held at a record the worker never finished and the consumer
            # sought back to it: a paused partition is not fetched, so that record would
            # never come and the commit point (hence the span) never move
            self._paused.discard(partition)
            log.info("partition %d resumed: sought back to a record it never finished",
                     partition)
            self._resume({partition})

    # -- rebalances and stopping -----------------------------------------------------------

    def revoke(self, through: int | None = None) -> int:
        """A rebalance revoked the partitions: every admitted event leaves the worker now
        (released, not committed); queued ones are dropped, running ones go on until their
        next lease check; events of the generations seen so far, and of ``through`` (the
        generation being revoked) and older, that arrive later are released as they come —
        the agent may hold a chunk of ``through`` that no event of reached the lanes before
        (waiting for its decode), and that chunk's messages (:meth:`taken`) are released
        now. Returns how many were released."""
        self._revoked_through = max(self._revoked_through, self._newest_generation,
                                    -1 if through is None else through)
        released = 0
        for message, generation in self._taken:  # the agent's chunk, waiting for its decode
            if self.revoked(generation):
                self._release(message)
                released += 1
        self._taken = [(m, g) for m, g in self._taken if not self.revoked(g)]
        for item in list(self._events.values()):
            self._leave(item, "released")
            released += 1
        for order_id, lane in list(self._lanes.items()):
            kept = [job for job in lane if not isinstance(job, Admitted)]
            running = lane[0] if lane else None
            lane.clear()
            if running is not None and running not in kept:
                lane.append(running)  # the lane pops it when it returns
            lane.extend(kept)
            if not lane:
                del self._lanes[order_id]
                self._tasks.pop(order_id, None)
        self.checkpoint.reset()
        self._paused.clear()
        return released

    def assigned(self, generation: int | None) -> None:
        """Partitions assigned in ``generation``. One at or below a revoked generation is the
        same generation given back (a member's rejoin the coordinator answered without a
        rebalance keeps it): its events are the new assignment's, and run."""
        if generation is not None and 0 <= generation <= self._revoked_through:
            self._revoked_through = generation - 1

    async def drain(self, timeout_s: float) -> int:
        """Stopping: let admitted events finish for up to ``timeout_s``; returns how many
        were left unfinished (then released by :meth:`revoke`)."""
        tasks = [t for t in [*self._tasks.values(), *self._alone] if not t.done()]
        if tasks:
            await asyncio.wait(tasks, timeout=timeout_s)
        return len(self._events)
