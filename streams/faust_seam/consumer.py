"""What the worker does to faust's consumer of the requests topic (docs/decisions/0003, 0006, 0013)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, cast

import faust
from aiokafka import AIOKafkaConsumer
from faust.transport.conductor import Conductor, ConductorCompiler
from faust.transport.consumer import Consumer as FaustConsumer
from faust.transport.consumer import ThreadDelegateConsumer
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.transport.drivers.aiokafka import Consumer as AIOKafkaDriverConsumer
from faust.types import ConsumerMessage, Message
from mode.services import Service, WaitResults
from mode.utils.futures import notify

from streams.faust_seam._base import CONTRACT, CONTRACT_FILES

log = logging.getLogger(__name__)


class ConsumerSeam:
    """What the worker does to faust's consumer of the requests topic.

    Fetching, in this order, before each of faust's fetches (one wrapper, so the order is
    fixed here): (1) seeks asked for by the checkpoint (records faust dropped that a commit
    would have passed), (2) seeks back over records faust fetched and dropped in the
    previous fetch, on any topic (a changelog restore too) — never moving a position
    forward. A partition that has no committed offset yet is "sought to committed" at its
    beginning, as ``auto.offset.reset=earliest`` means.

    Delivering: each fetched record reaches the streams eagerly (:func:`eager_delivery`).

    Pausing: a partition paused (:meth:`pause`) stays out of the fetch until :meth:`resume`
    — faust's buffer-pressure bookkeeping does not put it back (:meth:`_install_buffer_drop`)."""

    def __init__(self, app: faust.App, topic: str) -> None:
        self.app, self.topic = app, topic
        self.consumer: Any = app.consumer
        self.rewinds = 0
        self._pending_seeks: dict[int, int] = {}  # partition of ``topic`` → offset
        self._fetched: dict[Any, list[int]] | None = None
        self._rewind: dict[Any, int] = {}
        self.kept_paused = 0  # buffer drops of a paused partition kept out of the fetch
        self._install_fetch()
        self._install_seek_to_committed()
        self._install_commit_filter()
        self._install_buffer_drop()
        self.eager = eager_delivery(self.consumer)

    def generation(self) -> int:
        """The consumer group generation faust stamps on the records it fetches now
        (``ConsumerMessage.generation_id``: ``app.consumer_generation_id``, set at each
        assignment). In a rebalance's revoke, the generation being revoked."""
        return int(self.app.consumer_generation_id)

    # -- fetching --------------------------------------------------------------------

    def seek_before_next_fetch(self, partition: int, offset: int) -> None:
        current = self._pending_seeks.get(partition)
        self._pending_seeks[partition] = offset if current is None else min(current, offset)

    def _install_fetch(self) -> None:
        consumer, seam = self.consumer, self
        original_fetch, original_getmany = consumer._getmany, consumer.getmany

        async def _getmany(*args: Any, **kwargs: Any) -> Any:
            records = await original_fetch(*args, **kwargs)
            if records:
                seam._fetched = {tp: [r.offset for r in recs] for tp, recs in records.items()
                                 if recs}
            return records

        async def getmany(timeout: float) -> Any:
            await seam._apply_seeks()
            yielded: dict[Any, set[int]] = {}
            try:
                async for tp, message in original_getmany(timeout):
                    yielded.setdefault(tp, set()).add(message.offset)
                    yield tp, message
            finally:
                seam._note_dropped(yielded)

        consumer._getmany = _getmany
        consumer.getmany = getmany

    def _note_dropped(self, yielded: Mapping[Any, set[int]]) -> None:
        fetched, self._fetched = self._fetched, None
        for tp, offsets in (fetched or {}).items():
            rest = [o for o in offsets if o not in yielded.get(tp, set())]
            if rest:
                self._rewind[tp] = min(min(rest), self._rewind.get(tp, min(rest)))

    async def _apply_seeks(self) -> None:
        assignment = self.consumer.assignment()
        seeks, self._pending_seeks = self._pending_seeks, {}
        for partition, offset in seeks.items():
            tp = next((t for t in assignment
                       if t.topic == self.topic and t.partition == partition), None)
            if tp is not None:
                await self.consumer.seek(tp, offset)
        rewind, self._rewind = self._rewind, {}
        for tp, offset in sorted(rewind.items()):
            if tp not in assignment:
                continue
            position = await self.consumer.position(tp)
            if position is None or position <= offset:
                continue  # a seek since (recovery, perform_seek, the checkpoint) wins
            self.rewinds += 1
            log.warning("faust dropped fetched records of %s[%d] from offset %d; seeking "
                        "back from %d", tp.topic, tp.partition, offset, position,
                        extra={"partition": tp.partition, "offset": offset})
            await self.consumer.seek(tp, offset)

    def _install_seek_to_committed(self) -> None:
        consumer, topic = self.consumer, self.topic
        original = consumer.seek_to_committed

        async def seek_to_committed() -> Mapping[Any, int]:
            committed = await original()
            uncommitted = [tp for tp, offset in committed.items()
                           if tp.topic == topic and (offset is None or offset < 0)]
            if uncommitted:
                await consumer._thread.seek_to_beginning(*uncommitted)
            return committed

        consumer.seek_to_committed = seek_to_committed

    # -- acknowledging and committing ----------------------------------------------------

    @staticmethod
    def hold(message: Any) -> None:
        """Keep faust from ever counting ``message`` (a record of the requests topic) as
        processed: call it as the agent takes the message's event, before the stream can
        acknowledge it; :meth:`release` lets go of it. Offsets of the requests topic are
        committed by the worker's checkpoint alone (:meth:`commit`), never by faust.

        How: faust's conductor takes one reference on a message per stream it hands it to
        (``Message.incref``), and a stream's acknowledgement drops one
        (``Stream.take_events`` acks each event of a chunk once the agent asks for the next
        chunk: ``Stream.ack`` → ``Event.ack`` → ``Message.ack`` → ``decref``). Only the
        last reference's ack reaches the consumer (``ConsumerMessage.on_final_ack`` →
        ``Consumer.ack``), which marks the offset safe to commit for faust's own commits
        (``Consumer._commit_handler``, ``commit``/``force_commit``, ``wait_empty``: all
        commit only acked offsets, ``_new_offset``). One reference more here, and the
        stream's ack leaves it at 1; :meth:`release` then marks the message acked without
        that final ack, so every later ack is a no-op (``Message.ack`` looks at ``acked``
        first). Until then it stays in faust's unacked messages: a rebalance waits for it
        (:meth:`before_wait_empty` releases the worker's events first)."""
        message.incref()

    def _install_commit_filter(self) -> None:
        """Keep the requests topic out of faust's own commits, whatever acked it.

        :meth:`hold` keeps the streams' acks of a message the worker takes from reaching
        faust's consumer — but a message faust's stream skips itself (fetched in a
        generation that has since changed) is acked by the pure-Python stream iterator
        (``Stream._py_aiter``, used when faust's Cython extension is not built: an sdist
        install without Cython) though never by the compiled one. Acked, faust's own commit
        (its commit timer, ``wait_empty`` in a rebalance) would commit the requests
        partition past records the worker never finished. Every faust commit takes its
        offsets from ``Consumer._filter_committable_offsets``: the requests topic's
        partitions are dropped there, and the acks faust noted for them forgotten."""
        consumer, topic = self.consumer, self.topic
        original = consumer._filter_committable_offsets

        def _filter_committable_offsets(tps: Iterable[Any]) -> dict[Any, int]:
            others = []
            for tp in tps:
                if tp.topic == topic:
                    consumer._acked.pop(tp, None)
                    consumer._acked_index.pop(tp, None)
                else:
                    others.append(tp)
            return cast(dict[Any, int], original(others))

        consumer._filter_committable_offsets = _filter_committable_offsets

    def release(self, message: Any) -> None:
        """Let faust forget ``message`` (held: :meth:`hold`) without counting it as
        processed: it no longer holds up a rebalance (``wait_empty``) and faust itself never
        commits past it — offsets of the requests topic are committed by the worker's
        checkpoint alone (and faust's own commits leave that topic out: the commit
        filter installed at construction). Wakes faust's ``wait_empty`` as
        ``Consumer.ack`` does: a revocation that releases the worker's events goes on at
        once, not after its wait for an ack times out (1 s, ``_wait_for_ack``)."""
        message.acked = True  # later acks of the message are no-ops (faust Message.ack)
        self.consumer._unacked_messages.discard(message)
        notify(self.consumer._waiting_for_ack)

    async def commit(self, offsets: Mapping[int, int]) -> bool:
        """Commit ``partition → offset`` of the requests topic (faust flushes its producer
        first, skips partitions no longer assigned, and records the commit)."""
        assignment = {tp.partition: tp for tp in self.consumer.assignment()
                      if tp.topic == self.topic}
        tps = {assignment[p]: o for p, o in offsets.items() if p in assignment}
        if not tps:
            return False
        committed = bool(await self.consumer._commit_offsets(tps))
        if committed:
            self._forget_gaps(tps)
        return committed

    def _forget_gaps(self, committed: Mapping[Any, int]) -> None:
        """Drop faust's record of the gaps in a partition's offsets below what was committed.

        faust notes every gap it reads past (each transaction's commit marker the connector
        writes is one) to fill it in when it commits from its own acks — and only there
        does it chop them (``Consumer._new_offset``). The requests topic is committed by the
        checkpoint instead, so the gaps stayed: one interval per connector transaction for
        the life of the worker (tracemalloc: ~580 intervals per 15,000 Orders), and faust rebuilds the whole interval tree at every new gap
        (``merge_overlaps``), a cost that grew with it."""
        gaps = self.consumer._gap
        for tp, offset in committed.items():
            tree = gaps.get(tp)
            if tree:
                tree.chop(0, offset)

    def offset_gaps(self) -> int:
        """The gaps faust tracks in the requests partitions' offsets (/readyz): a handful at
        most, those above the last commit."""
        return sum(len(tree) for tp, tree in list(self.consumer._gap.items())
                   if tp.topic == self.topic)

    def before_wait_empty(self, callback: Callable[[bool, int], Awaitable[None]]) -> None:
        """``await callback(stopping, generation)`` whenever faust is about to wait for
        unacknowledged messages: in a rebalance (every partition is revoked: eager protocol)
        or when the worker stops — so the worker can finish or release its events first.
        ``generation`` is the one being revoked (:meth:`generation`: the next assignment
        sets the new one only after this wait)."""
        consumer, app = self.consumer, self.app
        original = consumer.wait_empty

        async def wait_empty() -> None:
            await callback(bool(app.should_stop), self.generation())
            await original()

        consumer.wait_empty = wait_empty

    def pause(self, partitions: Iterable[int]) -> None:
        """Stop fetching ``partitions`` of the requests topic until :meth:`resume`
        (idempotent: asking again for a paused partition changes nothing)."""
        self.consumer.pause_partitions(self._tps(partitions))

    def resume(self, partitions: Iterable[int]) -> None:
        self.consumer.resume_partitions(self._tps(partitions))

    def _install_buffer_drop(self) -> None:
        """Keep a paused partition out of the fetch when faust's buffer pressure drops.

        faust takes a partition out of its fetch (``Consumer._active_partitions``) when an
        agent's queue passes its high-pressure mark with the partition's records
        (``Consumer.on_buffer_full``: into ``_buffered_partitions``) and puts it back when
        the queue drains (``Consumer.on_buffer_drop``) — whether or not it was paused
        (``pause_partitions``) meanwhile. A partition the lanes paused behind a hung event
        (its uncommitted span past ``WORKER_PARTITION_WINDOW``: the memory bound) was
        fetched again, the lanes none the wiser. Here a drop of a paused partition only
        forgets the buffer mark; :meth:`resume` (``resume_partitions``) puts it back.

        faust's conductor takes ``app.consumer.on_buffer_drop`` when it builds a
        partition's handler (``ConductorHandler.__init__``, compiled, or
        ``ConductorCompiler.build``), at each assignment (``Conductor.
        on_partitions_assigned``) — after the worker built this seam: the wrap, on the
        consumer instance, is what it takes."""
        consumer, seam = self.consumer, self
        original = consumer.on_buffer_drop

        def on_buffer_drop(tp: Any) -> None:
            if tp in consumer._paused_partitions:
                if tp in consumer._buffered_partitions:
                    consumer._buffered_partitions.discard(tp)
                    seam.kept_paused += 1
                return
            original(tp)

        on_buffer_drop.__sfprov_original__ = original  # type: ignore[attr-defined]
        consumer.on_buffer_drop = on_buffer_drop

    def _tps(self, partitions: Iterable[int]) -> list[Any]:
        wanted = set(partitions)
        return [tp for tp in self.consumer.assignment()
                if tp.topic == self.topic and tp.partition in wanted]

    def assigned_partitions(self) -> set[int]:
        """The requests partitions this worker actively owns (not standbys)."""
        try:
            actives = self.app.assignor.assigned_actives()
        except Exception:  # noqa: BLE001 - before the first assignment
            return set()
        return {tp.partition for tp in actives if tp.topic == self.topic}

    # -- the stall watchdog (from its own thread) ----------------------------------------

    def reseek(self) -> None:
        """Seek the stream partitions back to their committed offsets (thread-safe)."""
        if self.app.rebalancing:
            return  # a rebalance seeks by itself when (if) it completes
        future = asyncio.run_coroutine_threadsafe(self.consumer.perform_seek(), self.app.loop)
        future.result(timeout=30)

    def recovery_position(self) -> int:
        try:
            recovery = cast(Any, self.app.tables).recovery
            return int(sum(recovery.active_offsets.values()))
        except Exception:  # noqa: BLE001 - read from another thread; best effort
            return 0

    def diagnose(self) -> dict[str, Any]:
        """faust's gates between the broker and the agent, read as they are."""
        app, consumer, topic = cast(Any, self.app), self.consumer, self.topic
        probes = {
            "flow_active": lambda: consumer.flow_active,
            "flow_control_active": lambda: app.flow_control.is_active(),
            "rebalancing": lambda: app.rebalancing,
            "recovery_completed": lambda: app.tables.recovery.completed.is_set(),
            "active_partitions": lambda: sorted(
                tp.partition for tp in (consumer._active_partitions or ())
                if tp.topic == topic),
            "paused_partitions": lambda: sorted(
                tp.partition for tp in consumer._paused_partitions if tp.topic == topic),
            "read_offsets": lambda: {tp.partition: off for tp, off
                                     in consumer._read_offset.items() if tp.topic == topic},
            "unacked_messages": lambda: len(consumer._unacked_messages),
            "deliveries_at_once_raced": lambda: (self.eager.at_once, self.eager.raced),
            "buffer_drops_kept_paused": lambda: self.kept_paused,
        }
        out: dict[str, Any] = {}
        for name, probe in probes.items():
            try:
                out[name] = probe()
            except Exception as exc:  # noqa: BLE001 - diagnostics only
                out[name] = f"? {type(exc).__name__}"
        return out


class _Continued:
    """The rest of a coroutine whose first step already ran: awaited (in a task), it goes on
    from what that step yielded, as if the task had run it from the start."""

    def __init__(self, coro: Any, yielded: Any) -> None:
        self.coro, self.yielded = coro, yielded

    def __await__(self) -> Any:
        coro, value = self.coro, self.yielded
        while True:
            try:
                sent = yield value
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # noqa: BLE001 - thrown in by the task: passed on
                try:
                    value = coro.throw(exc)
                except StopIteration as done:
                    return done.value
            else:
                try:
                    value = coro.send(sent)
                except StopIteration as done:
                    return done.value


class EagerDelivery:
    """Counts of :func:`eager_delivery`'s two paths (tests, diagnostics)."""

    def __init__(self) -> None:
        self.at_once = 0
        self.raced = 0


def eager_delivery(consumer: Any) -> EagerDelivery:
    """faust hands each fetched record to the streams with
    ``await self.wait_first(callback(record), self.suspend_flow.wait())`` (``Consumer.
    _drain_messages``): four tasks per record — the delivery, the suspension's wait and the
    consumer's stopped and crashed waits — an ``asyncio.wait`` over them, and three
    cancellations; 27–29 µs per record on this box (``mode``'s ``Service.wait_first``
    against a bare ``await``: 0.1 µs), one record per Order.

    The delivery almost always finishes without waiting (the stream's queue has room). So,
    for exactly that call, its first step runs at once: finished, its result is the
    winner, as ``wait_first`` would have said, and no task is made. When it has to wait (a
    full queue, flow control), the race is ``wait_first``'s own, with the delivery going on
    from where it stopped: a suspension still cancels a delivery that waits. Any other call,
    and this one while the flow is suspended or the consumer stopping, is ``wait_first``'s
    (docs/decisions/0013)."""
    counts = EagerDelivery()
    original = consumer.wait_first

    async def wait_first(*coros: Any, timeout: Any = None) -> WaitResults:
        deliver = getattr(consumer, "callback", None)
        first: Any = coros[0] if coros else None
        if timeout is not None or len(coros) != 2 or deliver is None or \
                getattr(first, "cr_code", None) is not getattr(deliver, "__code__", False) \
                or consumer.suspend_flow.is_set() or consumer._stopped.is_set() \
                or consumer._crashed.is_set():
            return await original(*coros, timeout=timeout)
        rest = coros[1]
        try:
            yielded = first.send(None)
        except StopIteration as done:
            rest.close()  # the suspension's wait, never started
            counts.at_once += 1
            return WaitResults([first], [done.value], False)
        except BaseException:
            rest.close()
            raise
        counts.raced += 1
        continued = _Continued(first, yielded)
        results = await original(continued, rest)
        return results._replace(done=[first if w is continued else w
                                      for w in results.done])

    wait_first.__sfprov_original__ = original  # type: ignore[attr-defined]
    consumer.wait_first = wait_first
    return counts


CONTRACT.update({
    "R faust Consumer._drain_messages (wait_first per record)": (
        FaustConsumer, "_drain_messages", "44a2500309e83c630493f6828af50166"),
    "W mode Service.wait_first": (Service, "wait_first", "feade6a31f8a67897cf687c54c66f5f4"),
    "R faust Consumer._clean_unacked_messages": (
        FaustConsumer, "_clean_unacked_messages", "11be2587e71c9162510ba634577e1da5"),
    "R faust Consumer.ack": (FaustConsumer, "ack", "5fcf41cf45153475de3790dc56fec1b8"),
    "W faust Consumer._getmany": (AIOKafkaDriverConsumer, "_getmany", "f9d47aa9010b5ff2b874ba65f927871f"),
    "W faust Consumer.getmany": (AIOKafkaDriverConsumer, "getmany", "4b168d84882a70d6e3e2f9804430a63b"),
    "W faust Consumer.seek_to_committed": (AIOKafkaDriverConsumer, "seek_to_committed", "f1d483b861b0328b4f0be90a4abc3f95"),
    "W faust AIOKafkaConsumerThread._create_worker_consumer": (
        AIOKafkaConsumerThread, "_create_worker_consumer", "c2701bfc3e6f6cad95c2be36d6a255a8"),
    "R faust Consumer._commit_offsets": (
        AIOKafkaDriverConsumer, "_commit_offsets", "1a6979904118844111259d182ca1c6e9"),
    "R faust Consumer.wait_empty": (AIOKafkaDriverConsumer, "wait_empty", "e4662fe24f094819add590b2d75f2338"),
    # before_wait_empty on a stop (the SIGTERM drain, lease.lost(), the last commit): the
    # app's stop stops its consumer first, which waits empty (stream_wait_empty, pinned
    # on by build_app), and the consumer's own stop waits empty again
    "R faust App.on_stop (stops the consumer first)": (
        faust.App, "on_stop", "bfe5a933defb2324031e00f20e2f6501"),
    "R faust App._stop_consumer (waits empty)": (
        faust.App, "_stop_consumer", "55854a5de12c3f5296b4acf16ddfe359"),
    "R faust Consumer.on_stop (wait_empty with stream_wait_empty)": (
        FaustConsumer, "on_stop", "45b1d2210ce2b526339856969472683f"),
    "R faust aiokafka Consumer.on_stop (its base's first)": (
        AIOKafkaDriverConsumer, "on_stop", "173f86b366f3608e2d2c7c0b5c7f223e"),
    "R faust Consumer._add_gap": (FaustConsumer, "_add_gap", "4df2573ded7c1c2cde04dc6bde6d4480"),
    "R faust Consumer._new_offset": (
        FaustConsumer, "_new_offset", "1d2c7ea89a7ad4f1a216c1d51936e569"),
    # hold / release: faust never commits the requests topic (a stream's ack only decrefs a
    # held message; only the final ack reaches Consumer.ack; faust commits only acked offsets)
    "R faust Message.incref": (Message, "incref", "78d34df830d3089b463d2bbc6e06892f"),
    "R faust Message.decref": (Message, "decref", "f23396189d0e55922d5c9c627879af52"),
    "R faust Message.ack (no-op once acked; final ack at refcount 0)": (
        Message, "ack", "4751b72c4ed84153a7b6c14fdfe41cc9"),
    "R faust ConsumerMessage.on_final_ack": (
        ConsumerMessage, "on_final_ack", "45d670b6a8ac4bd07a3e5600c8935863"),
    "R faust Stream.take_events (acks each event of a chunk once)": (
        faust.Stream, "take_events", "607d48aead118ba8ea868718a0df87de"),
    "R faust Stream.ack": (faust.Stream, "ack", "32d7171a89b0931d806a87dc81dcba56"),
    "R faust Event.ack": (faust.Event, "ack", "2d29a6eda87c4ce5f7a491e486c88be9"),
    "R faust Consumer._commit_handler": (
        FaustConsumer, "_commit_handler", "4e5da5df073082d6b82c629ff9aa2ffa"),
    "R faust Consumer.force_commit": (
        FaustConsumer, "force_commit", "cc094614d22c70fb03606f8e5b940fdd"),
    "R faust Consumer._commit_tps": (
        FaustConsumer, "_commit_tps", "a20e230b05ae8b151ac9f78fa77a1020"),
    # the commit filter: every faust commit takes its offsets from here (force_commit →
    # _commit_tps → _filter_committable_offsets → _new_offset), whichever stream iterator
    # acked them: the compiled one never acks a message it skips, the pure-Python one does
    "W faust Consumer._filter_committable_offsets (requests topic left out)": (
        FaustConsumer, "_filter_committable_offsets", "dc5e9baf5d994485473ce80aed1873b9"),
    "R faust Stream.__aiter__ (compiled iterator if built, else pure Python)": (
        faust.Stream, "__aiter__", "e815c0e831f1d2ccf43b083b725f8740"),
    "R faust Stream._c_aiter (a skipped message is not acked)": (
        faust.Stream, "_c_aiter", "fa44582a5882e9df5240199eabc47566"),
    "R faust Stream._py_aiter (a skipped message is acked)": (
        faust.Stream, "_py_aiter", "3a48ee257a65435b482d51edb74f2993"),
    # seek_to_committed's seek to the beginning of a partition with nothing committed
    "R faust AIOKafkaConsumerThread.seek_to_beginning": (
        AIOKafkaConsumerThread, "seek_to_beginning", "bd4250b8d1e76d339a99ceff690c9d7a"),
    # commit: _commit_offsets → ThreadDelegateConsumer._commit → the thread's commit → its
    # _commit, which answers False (no crash) when the group rebalanced meanwhile
    "R faust ThreadDelegateConsumer._commit": (
        ThreadDelegateConsumer, "_commit", "a20eec84e4b2ed5072f6c6ab7707ac03"),
    "R faust AIOKafkaConsumerThread.commit": (
        AIOKafkaConsumerThread, "commit", "d31c8558ba25310c0b7acbf128a24413"),
    "R faust AIOKafkaConsumerThread._commit (False on 'already rebalanced')": (
        AIOKafkaConsumerThread, "_commit", "932852ce7a23f658804273d0296de6af"),
    # generation: what faust stamps on a fetched record (set at each assignment:
    # ConsumerRebalanceListener.on_partitions_assigned, wrapped in membership)
    "R faust aiokafka Consumer._to_message (generation_id: app.consumer_generation_id)": (
        AIOKafkaDriverConsumer, "_to_message", "7c24f6511b2fcef7cbfe73526e78de03"),
    # before_wait_empty: faust waits for unacked messages when a rebalance revokes
    "R faust App._on_partitions_revoked": (
        faust.App, "_on_partitions_revoked", "d5c895bbe57dc73ae4d7f762f6fdc9fd"),
    "R faust App._consumer_wait_empty": (
        faust.App, "_consumer_wait_empty", "6bc313c48c064b1626be9fb38fcc8760"),
    # reseek, and OrderedRecovery's seek (seek_to_committed, wrapped here)
    "R faust Consumer.perform_seek": (
        FaustConsumer, "perform_seek", "0e8c130ff4b0afd82c0be9c5fd831316"),
    # the seek to the beginning of a partition with nothing committed: aiokafka's leaves it
    "R aiokafka AIOKafkaConsumer.seek_to_committed (no seek for None/0)": (
        AIOKafkaConsumer, "seek_to_committed", "f6cd85c8b70a4ccf7e862de24f6c5d98"),
    "R faust AIOKafkaConsumerThread.seek_to_committed (the committed offsets, None too)": (
        AIOKafkaConsumerThread, "seek_to_committed", "775ab0adc4b052abee204d5347a55641"),
    # the fetch wraps are on the consumer instance: faust must fetch through self._getmany
    "R faust Consumer._wait_next_records (fetches via self._getmany)": (
        FaustConsumer, "_wait_next_records", "6218e1969a636b3ff504ad1b8e7ad58a"),
    # the seeks back over dropped records: the records sought back over are taken again
    "R faust Consumer.seek (resets _read_offset)": (
        FaustConsumer, "seek", "b86a9fe05f956b30cf299c787b6787c6"),
    # release wakes wait_empty's wait for an ack, as Consumer.ack does
    "R faust Consumer._wait_for_ack (woken through _waiting_for_ack)": (
        FaustConsumer, "_wait_for_ack", "d9c9337d4af88e54a26a9a45aeb73ca8"),
    # pause / resume, and the buffer-drop wrap that keeps a paused partition out of the fetch
    "W faust Consumer.on_buffer_drop (puts a buffered partition back, paused or not)": (
        FaustConsumer, "on_buffer_drop", "4b57e8a418d5ad9c58632b13b58b377a"),
    "R faust Consumer.on_buffer_full (out of the fetch, into _buffered_partitions)": (
        FaustConsumer, "on_buffer_full", "c8961679e0bcdce5c23b07143d687ec8"),
    "R faust Consumer.pause_partitions (out of the fetch, into _paused_partitions)": (
        FaustConsumer, "pause_partitions", "27a1c94bdacd54de06593ec4eb040b32"),
    "R faust Consumer.resume_partitions (back into the fetch, out of _paused_partitions)": (
        FaustConsumer, "resume_partitions", "afe6b7c02a41d63cd46d47a03f09b547"),
    "R faust Consumer._get_active_partitions (what is fetched)": (
        FaustConsumer, "_get_active_partitions", "b24897f3c7afdb5d02e5741d1a3d3c2b"),
    "R faust Consumer._set_active_tps (paused partitions left out)": (
        FaustConsumer, "_set_active_tps", "401f4dc8831919506d464d5fe7cee96d"),
    "R faust ConductorCompiler.build (takes app.consumer.on_buffer_drop when built)": (
        ConductorCompiler, "build", "837cf521368c1ee4b22c235a2b137f66"),
    "R faust Conductor._build_handler (the compiled ConductorHandler if built)": (
        Conductor, "_build_handler", "5c071d1277988c57e4bb62e25551981b"),
    "R faust Conductor._update_callback_map (a handler per assigned partition)": (
        Conductor, "_update_callback_map", "37598771880d27baf413d0f0c939fc88"),
    "R faust Conductor.on_partitions_assigned (handlers built at each assignment)": (
        Conductor, "on_partitions_assigned", "616e9729131cf0bb7ed8e7108d47bab6"),
})
CONTRACT_FILES.update({
    # the compiled stream iterator (Stream._c_aiter): its StreamIterator's source
    "R faust _cython/streams.pyx (StreamIterator: a skipped message is not acked)": (
        "faust", "_cython/streams.pyx", "0041622f4a251188f53d73e6d51d18d1"),
    # the compiled conductor handler: takes app.consumer.on_buffer_drop in its __init__
    "R faust transport/_cython/conductor.pyx (ConductorHandler takes on_buffer_drop)": (
        "faust", "transport/_cython/conductor.pyx", "dde1f974267881cf8c5f7e4fd2b114a2"),
})
