"""One ``Subscribe`` stream: flow control, replay presets, keepalives, idle close, drop.

A reader task consumes FetchRequests (adding to ``pending``, capped at 100) while
:meth:`Subscription.responses` delivers stored events after ``position`` — never more
than ``pending`` — and wakes on new events (store listener), new requests, a drop or a
timer. See :mod:`.pubsub` for the contract.

A keepalive of a stream that is caught up (no stored event of its topic after
``position``) carries the head of the bus, a fresh replay number (:meth:`.Store.bus_mark`),
and moves ``position`` there: a quiet subscription's stored id stays young, so a resubscribe
from it still works once the last real event has left the retention (REFERENCE: "it keeps
a quiet subscription's position fresh"). A stream with undelivered events keeps reporting
the last event it delivered.

A call the client cancels (or whose connection goes) ends here at once: gRPC cancels the
handler task, and every wait lets that cancellation through (:func:`_wait`), so the stream
leaves ``streams`` and the store's listeners and is never allocated, counted or sent another
event. Salesforce does not deliver to a cancelled stream. A client that only half-closes
its request stream is not gone: it keeps receiving what it requested.

Every delivered event counts against the org's 24-hour delivery allocation
(:meth:`.PubSubService.allocate`): a batch larger than what is left is cut to it, and a
stream with an event to deliver when nothing is left ends with the limit error.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc

from . import permissions
from .events import TOPICS
from .generated import pubsub_api_pb2 as pb
from .pubsub import (
    FETCH_INVALID,
    MAX_REQUESTED,
    REPLAY_CORRUPTED,
    TOPIC_NOT_FOUND,
    UNAVAILABLE,
    PubSubService,
    _rpc_id,
    _StreamError,
    decode_replay,
    encode_replay,
)

#: a keepalive reuses the newest bus mark while it is younger than this (and a quarter of
#: the retention): a quiet org does not burn a replay number per keepalive, and an id a
#: client got from a keepalive stays valid for (almost) the whole retention
MARK_REUSE_S = 3600.0
#: a FetchResponse carries events up to about this many bytes (always at least one), within
#: gRPC's default 4 MiB message limit (REFERENCE: "4 MB hard gRPC limit"), so a client with
#: default channel options reads every response
FETCH_RESPONSE_BYTES = 4 * 1024 * 1024 - 64 * 1024


def _fitting(batch: list[Any], budget: int = FETCH_RESPONSE_BYTES) -> list[Any]:
    """The leading events of ``batch`` whose encoded size stays within ``budget``."""
    size = 0
    for count, event in enumerate(batch):
        size += len(event.payload) + len(event.uuid) + len(event.schema_id) + 64
        if count and size > budget:
            return batch[:count]
    return batch


async def _wait(event: asyncio.Event, timeout: float) -> None:
    """Wait until ``event`` is set, at most ``timeout`` seconds.

    Not ``asyncio.wait_for``: before Python 3.12 it swallows a cancellation that arrives in
    the loop turn its awaitable completes in. A client's cancel does exactly that: it ends
    the request stream (the reader sets ``wake``) and gRPC cancels the handler in the same
    turn, so with ``wait_for`` the cancelled stream lived on until its next send failed,
    allocating and counting events meanwhile. ``asyncio.timeout`` lets it through."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await event.wait()


class Subscription:
    def __init__(self, service: PubSubService, requests: Any) -> None:
        self.service = service
        self.sb = service.sb
        self.requests = requests
        self.token: str | None = None
        self.topic: str | None = None
        self.position = 0
        self.pending = 0
        self.error: _StreamError | None = None
        self.reader_done = False
        #: the call is gone (cancelled by the client, its connection lost): nothing more is
        #: delivered or counted. A normal half-close only sets ``reader_done``
        self.closed = False
        self.wake = asyncio.Event()

    # -- called from outside ------------------------------------------------------------
    def notify(self) -> None:
        self.wake.set()

    def drop(self) -> None:
        self.error = _StreamError(grpc.StatusCode.UNAVAILABLE, UNAVAILABLE,
                                  "Service unavailable: stream dropped by the sandbox")
        self.wake.set()

    # -- reader -------------------------------------------------------------------------
    def _first(self, request: Any) -> None:
        if request.topic_name not in TOPICS:
            raise _StreamError(grpc.StatusCode.NOT_FOUND, TOPIC_NOT_FOUND,
                               f"topic {request.topic_name} not found")
        self.service.require(self.token, request.topic_name, permissions.SUBSCRIBE)
        store = self.sb.store
        self.sb.purge()
        if request.replay_preset == pb.EARLIEST:
            self.position = store.purged_upto
        elif request.replay_preset == pb.CUSTOM:
            value = decode_replay(request.replay_id)
            valid = value is not None and value <= store.last_replay and (
                value > store.purged_upto or value == store.purged_upto == 0)
            if not valid or value is None:
                raise _StreamError(grpc.StatusCode.INVALID_ARGUMENT, REPLAY_CORRUPTED,
                                   "The Replay ID validation failed: the replay id is corrupted "
                                   "or no longer retained")
            self.position = value
        else:
            self.position = store.last_replay
        self.topic = request.topic_name

    async def _read(self) -> None:
        try:
            async for request in self.requests:
                if request.auth_refresh:
                    self.token = request.auth_refresh
                self.service.check_token(self.token)
                if self.topic is None:
                    self._first(request)
                elif request.topic_name and request.topic_name != self.topic:
                    raise _StreamError(grpc.StatusCode.INVALID_ARGUMENT, FETCH_INVALID,
                                       "topic_name differs from the stream's first FetchRequest")
                elif request.auth_refresh:
                    # Subscribe is checked when the stream authenticates: at the first
                    # FetchRequest and again when auth_refresh hands it a new session (which
                    # may be another user's). A profile edit alone does not cut a live
                    # stream: the permission is checked at subscribe, not per event
                    # (REFERENCE documents no mid-stream re-check), so a revoked Subscribe
                    # shows at the next auth_refresh or the next Subscribe.
                    self.service.require(self.token, self.topic, permissions.SUBSCRIBE)
                if request.num_requested < 0:
                    raise _StreamError(grpc.StatusCode.INVALID_ARGUMENT, FETCH_INVALID,
                                       "num_requested must not be negative")
                self.pending = min(MAX_REQUESTED, self.pending + request.num_requested)
                self.sb.counters.count("grpc_fetch_requests")
                self.wake.set()
        except _StreamError as err:
            self.error = err
        except (asyncio.CancelledError, grpc.RpcError):
            self.closed = True  # the call is gone, not half-closed: do not serve its credit
        finally:
            self.reader_done = True
            self.wake.set()

    # -- writer -------------------------------------------------------------------------
    async def responses(self) -> AsyncIterator[Any]:
        sb, cfg, loop = self.sb, self.sb.config, asyncio.get_running_loop()
        sb.streams.add(self)
        sb.store.listeners.append(self.notify)
        reader = asyncio.create_task(self._read())
        last_sent = idle_since = loop.time()
        try:
            while True:
                self.wake.clear()
                if self.error is not None:
                    raise self.error
                if self.closed:
                    return
                if self.reader_done and (self.topic is None or self.pending == 0):
                    return
                if self.topic is not None:
                    # the server's own push is no use of the session: it must not renew it
                    self.service.check_token(self.token, renew=False)
                now = loop.time()
                if self.topic is not None and self.pending > 0:
                    idle_since = now
                    batch = _fitting(sb.store.events_after(self.topic, self.position,
                                                           min(self.pending, MAX_REQUESTED)))
                    if batch:
                        # counted before the (injected) latency, so streams sending at once
                        # never deliver more than the allocation between them
                        batch = batch[:self.service.allocate(len(batch))]
                        await self.service._latency()
                        self.pending -= len(batch)
                        self.position = batch[-1].replay
                        sb.counters.count("grpc_events_delivered", len(batch))
                        sb.counters.count("grpc_fetch_responses")
                        yield pb.FetchResponse(
                            events=[pb.ConsumerEvent(event=pb.ProducerEvent(
                                id=e.uuid, schema_id=e.schema_id, payload=e.payload),
                                replay_id=encode_replay(e.replay)) for e in batch],
                            latest_replay_id=encode_replay(self.position), rpc_id=_rpc_id(),
                            pending_num_requested=self.pending)
                        last_sent = loop.time()
                        continue
                elif now - idle_since >= cfg.idle_close_s:
                    sb.counters.count("grpc_idle_closed")
                    return
                # a keepalive only while events are requested (Salesforce's Subscribe RPC:
                # "pending requested events to deliver but no events are available"); a
                # stream nothing is requested on hears nothing until its idle close
                if (self.topic is not None and self.pending > 0
                        and now - last_sent >= cfg.keepalive_s
                        and not sb.faults.keepalives_paused):
                    sb.counters.count("grpc_keepalives")
                    if not sb.faults.keepalives_hold_position and \
                            not sb.store.events_after(self.topic, self.position, 1):
                        reuse_ms = int(min(MARK_REUSE_S, cfg.retention_s / 4) * 1000)
                        self.position = max(self.position, sb.store.bus_mark(reuse_ms))
                    yield pb.FetchResponse(latest_replay_id=encode_replay(self.position),
                                           rpc_id=_rpc_id(), pending_num_requested=self.pending)
                    last_sent = loop.time()
                    continue
                timeout = cfg.keepalive_s - (now - last_sent)
                if sb.faults.keepalives_paused or self.topic is None:
                    timeout = cfg.keepalive_s
                if self.pending == 0:
                    timeout = cfg.idle_close_s - (now - idle_since)
                await _wait(self.wake, max(timeout, 0.01))
        finally:
            sb.streams.discard(self)
            if self.notify in sb.store.listeners:
                sb.store.listeners.remove(self.notify)
            reader.cancel()
