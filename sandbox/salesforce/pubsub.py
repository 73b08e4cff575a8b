"""The Pub/Sub API gRPC service (``eventbus.v1.PubSub``) over the sandbox's event store.

Auth: every RPC needs metadata ``accesstoken`` (a live token), ``instanceurl`` and
``tenantid`` (= the org id); otherwise UNAUTHENTICATED with trailing metadata
``error-code: sfdc.platform.eventbus.grpc.service.auth.error``. Tokens are re-checked on
every FetchRequest and before every response, so an expired token ends a stream. Only the
client's activity (RPCs, FetchRequests, ``auth_refresh``) renews a session; the stream's
own responses and keepalives do not (REFERENCE §1, §2: tokens expire mid-stream), so a
subscriber that sends nothing after its first FetchRequest is cut at the first response or
keepalive after its session timed out.
Permissions (:mod:`.permissions`): GetTopic tells ``can_publish``/``can_subscribe``;
Publish and Subscribe without them end PERMISSION_DENIED — Subscribe is checked at the
first FetchRequest and at each ``auth_refresh``, not per event.

Replay ids are 9 opaque bytes (a version byte and the store's sequence number), strictly
increasing, not contiguous: successive events' numbers leave random gaps
(:meth:`.Store.next_replay`), and keepalives take numbers too (:mod:`.subscription`).
``Subscribe`` honours the replay preset of the **first** FetchRequest only
(CUSTOM resumes *after* the given id; a purged, future or garbled id ends the stream
with INVALID_ARGUMENT + ``...subscription.fetch.replayid.corrupted``); outstanding
``num_requested`` is capped at 100 and never exceeded; events are batched (≤ 100 per
response); an empty FetchResponse carrying ``latest_replay_id`` is sent after
``keepalive_s`` without output (a caught-up stream's carries a fresh replay id); a
stream with nothing requested for ``idle_close_s`` is closed (status OK); a FetchResponse
stays within 4 MiB (events split over several). The ``subscribe_error_*`` faults end the
next Subscribe calls with a chosen status and ``error-code`` (limits, INTERNAL).

Delivery allocation (REFERENCE §1: "24 h delivery allocation … summed over all
subscribers"): every event delivered to any stream counts against ``delivery_allocation``
over a rolling 24 hours of the sandbox clock (:class:`.faults.RollingWindow`, persisted).
A stream about to deliver more than is left delivers what is left, then ends with
RESOURCE_EXHAUSTED + ``...subscription.limit.exceeded`` (the rendering of the injected limit
fault); while nothing is left, a new Subscribe ends so at once, after authentication. A
stream with nothing to deliver is not ended; keepalives count nothing.

Publish: an event over 1 MiB gets a PublishResult error (code PUBLISH), the others in the
request are published; a request over 4 MiB is refused by gRPC (RESOURCE_EXHAUSTED,
:data:`.server.GRPC_OPTIONS`). ``PublishStream``: the first request names the topic; a
later one may omit it (the first's is used) but naming another is INVALID_ARGUMENT.
Error codes other than auth/corrupted/unavailable/limits are unverified.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import grpc

from . import permissions
from .core import Sandbox
from .events import EXTRA_SCHEMA_JSON, SCHEMAS, TOPICS
from .faults import LIMIT_EXCEEDED, LIMIT_STATUS
from .generated import pubsub_api_pb2 as pb
from .generated import pubsub_api_pb2_grpc as pb_grpc

AUTH_ERROR = "sfdc.platform.eventbus.grpc.service.auth.error"
REPLAY_CORRUPTED = "sfdc.platform.eventbus.grpc.subscription.fetch.replayid.corrupted"
UNAVAILABLE = "sfdc.platform.eventbus.grpc.service.unavailable"
TOPIC_NOT_FOUND = "sfdc.platform.eventbus.grpc.topic.not.found"
SCHEMA_NOT_FOUND = "sfdc.platform.eventbus.grpc.schema.not.found"
# Salesforce's code for a refused permission is not documented in REFERENCE; the connector
# goes by the gRPC status (PERMISSION_DENIED), not by these words
PERMISSION_DENIED = "sfdc.platform.eventbus.grpc.service.permission.denied"
FETCH_INVALID = "sfdc.platform.eventbus.grpc.fetch.request.invalid"
PUBLISH_INVALID = "sfdc.platform.eventbus.grpc.publish.request.invalid"  # unverified too
MAX_REQUESTED = 100
#: REFERENCE §1: "event ≤ 1 MB"
MAX_EVENT_BYTES = 1024 * 1024


def encode_replay(sequence: int) -> bytes:
    return b"\x01" + sequence.to_bytes(8, "big")


def decode_replay(replay_id: bytes) -> int | None:
    if len(replay_id) != 9 or replay_id[0] != 1:
        return None
    return int.from_bytes(replay_id[1:], "big")


def _rpc_id() -> str:
    return str(uuid.uuid4())


class _StreamError(Exception):
    def __init__(self, code: grpc.StatusCode, error_code: str, details: str) -> None:
        super().__init__(details)
        self.code, self.error_code, self.details = code, error_code, details


class PubSubService(pb_grpc.PubSubServicer):
    def __init__(self, sandbox: Sandbox) -> None:
        self.sb = sandbox

    def check_token(self, token: str | None, *, renew: bool = True) -> None:
        """Raise UNAUTHENTICATED unless ``token`` is live. A check on the client's behalf (an
        RPC, a FetchRequest) is use and may renew the session; the stream's own check before
        a response or keepalive passes ``renew=False`` (:meth:`.Store.token_user`)."""
        if not token or self.sb.store.token_user(token, renew=renew) is None:
            raise _StreamError(grpc.StatusCode.UNAUTHENTICATED, AUTH_ERROR,
                               "Session expired or invalid")

    def authenticate(self, context: Any) -> str:
        meta = {k.lower(): v for k, v in context.invocation_metadata() or ()}
        token = meta.get("accesstoken")
        self.check_token(token)
        if meta.get("tenantid") != self.sb.org_id or not meta.get("instanceurl"):
            raise _StreamError(grpc.StatusCode.UNAUTHENTICATED, AUTH_ERROR,
                               "tenantid or instanceurl invalid for this session")
        return str(token)

    def may(self, token: str | None, topic: str, op: str) -> bool:
        """Whether the user behind ``token`` may ``op`` (``permissions.SUBSCRIBE`` or
        ``PUBLISH``) on ``topic``. A token that no longer names a user (it expired since the
        RPC was authenticated, e.g. during injected latency) may nothing: not knowing who
        asks must not read as "no profile holds them"."""
        user_id = self.sb.store.token_user(token) if token else None
        user = self.sb.store.get(user_id) if user_id else None
        if user is None:
            return False
        profile = self.sb.restricted(user)
        return profile is None or profile.may_event(topic, op)

    def require(self, token: str | None, topic: str, op: str) -> None:
        """Raise PERMISSION_DENIED unless the user may ``op`` on ``topic``; UNAUTHENTICATED
        first when ``token`` no longer names a user (that is what is wrong then)."""
        self.check_token(token)
        if not self.may(token, topic, op):
            verb = "publish to" if op == permissions.PUBLISH else "subscribe to"
            raise _StreamError(grpc.StatusCode.PERMISSION_DENIED, PERMISSION_DENIED,
                               f"the user may not {verb} {topic}: grant the permission in "
                               "its profile or a permission set")

    def _allocation_exhausted(self) -> _StreamError:
        sb = self.sb
        return _StreamError(grpc.StatusCode[LIMIT_STATUS], LIMIT_EXCEEDED,
                            "delivery allocation exhausted: "
                            f"{sb.counters.deliveries.used} of {sb.faults.delivery_allocation} "
                            "events delivered in the last 24 hours, summed over all subscribers")

    def check_allocation(self) -> None:
        """Refuse a new subscription while the 24-hour delivery allocation is used up."""
        if self.sb.counters.deliveries.used >= self.sb.faults.delivery_allocation:
            self.sb.counters.count("grpc_delivery_limited")
            raise self._allocation_exhausted()

    def allocate(self, events: int) -> int:
        """Count up to ``events`` deliveries against the 24-hour delivery allocation (summed
        over every subscriber); how many may be delivered. None left: the limit error."""
        sb = self.sb
        granted = sb.counters.deliveries.take(sb.store.now_ms(), sb.faults.delivery_allocation,
                                              events)
        if granted == 0:
            sb.counters.count("grpc_delivery_limited")
            raise self._allocation_exhausted()
        return granted

    async def _latency(self) -> None:
        if self.sb.faults.grpc_latency_ms:
            await asyncio.sleep(self.sb.faults.grpc_latency_ms / 1000)

    @staticmethod
    async def _abort(context: Any, err: _StreamError) -> None:
        # Salesforce's code rides in the trailer ``error-code`` (REFERENCE §1); a bare gRPC
        # status (e.g. an injected INTERNAL) has none
        trailer = (("error-code", err.error_code),) if err.error_code else ()
        await context.abort(err.code, err.details, trailing_metadata=trailer)

    async def GetSchema(self, request: Any, context: Any) -> Any:
        self.sb.counters.count("grpc_get_schema")
        try:
            self.authenticate(context)
            await self._latency()
            schema = SCHEMAS.get(request.schema_id)
            schema_json = schema.schema_json if schema is not None else \
                EXTRA_SCHEMA_JSON.get(request.schema_id)
            if schema_json is None:
                raise _StreamError(grpc.StatusCode.NOT_FOUND, SCHEMA_NOT_FOUND,
                                   f"schema {request.schema_id} not found")
        except _StreamError as err:
            await self._abort(context, err)
        return pb.SchemaInfo(schema_json=schema_json, schema_id=request.schema_id,
                             rpc_id=_rpc_id())

    async def GetTopic(self, request: Any, context: Any) -> Any:
        self.sb.counters.count("grpc_get_topic")
        try:
            token = self.authenticate(context)
            await self._latency()
            schema = TOPICS.get(request.topic_name)
            if schema is None:
                raise _StreamError(grpc.StatusCode.NOT_FOUND, TOPIC_NOT_FOUND,
                                   f"topic {request.topic_name} not found")
        except _StreamError as err:
            await self._abort(context, err)
        topic = request.topic_name
        return pb.TopicInfo(topic_name=topic, tenant_guid=self.sb.org_id,
                            can_publish=self.may(token, topic, permissions.PUBLISH),
                            can_subscribe=self.may(token, topic, permissions.SUBSCRIBE),
                            schema_id=schema.schema_id, rpc_id=_rpc_id())

    def _publish(self, request: Any, token: str | None, topic: str | None = None) -> Any:
        """Publish ``request``'s events to ``topic`` (default: the request's topic_name)."""
        topic = request.topic_name if topic is None else topic
        schema = TOPICS.get(topic)
        if schema is None:
            raise _StreamError(grpc.StatusCode.NOT_FOUND, TOPIC_NOT_FOUND,
                               f"topic {topic} not found")
        self.require(token, topic, permissions.PUBLISH)
        results: list[Any] = []
        now = self.sb.store.now_ms()
        with self.sb.store.transaction() as tx:
            for event in request.events:
                event_id = event.id or str(uuid.uuid4())
                try:
                    if len(event.payload) > MAX_EVENT_BYTES:
                        raise ValueError(f"the event is {len(event.payload)} bytes: the maximum "
                                         f"event size is 1 MiB ({MAX_EVENT_BYTES} bytes)")
                    if event.schema_id != schema.schema_id:
                        raise ValueError(f"schema id {event.schema_id} is not the topic's")
                    schema.decode(event.payload)
                except Exception as exc:  # noqa: BLE001 - any decode failure is a publish error
                    results.append(pb.PublishResult(correlation_key=event_id, error=pb.Error(
                        code=pb.PUBLISH, msg=str(exc))))
                    continue
                tx.add_event(topic, event_id, event.schema_id, event.payload, now)
                results.append(event_id)
        stored = iter(tx.committed_events)
        out = [r if not isinstance(r, str) else pb.PublishResult(
            replay_id=encode_replay(next(stored).replay), correlation_key=r) for r in results]
        self.sb.counters.count("grpc_published", len(tx.committed_events))
        return pb.PublishResponse(results=out, schema_id=schema.schema_id, rpc_id=_rpc_id())

    async def Publish(self, request: Any, context: Any) -> Any:
        self.sb.counters.count("grpc_publish")
        try:
            token = self.authenticate(context)
            await self._latency()
            return self._publish(request, token)
        except _StreamError as err:
            await self._abort(context, err)

    async def PublishStream(self, request_iterator: Any, context: Any) -> Any:
        self.sb.counters.count("grpc_publish_stream")
        try:
            token = self.authenticate(context)
            topic: str | None = None  # the first request's: it identifies the stream's topic
            async for request in request_iterator:
                token = request.auth_refresh or token
                self.check_token(token)
                if topic is None:
                    topic = request.topic_name
                elif request.topic_name and request.topic_name != topic:
                    raise _StreamError(grpc.StatusCode.INVALID_ARGUMENT, PUBLISH_INVALID,
                                       f"topic_name {request.topic_name} differs from the "
                                       f"stream's first PublishRequest ({topic})")
                await self._latency()
                yield self._publish(request, token, topic)
        except _StreamError as err:
            await self._abort(context, err)

    async def ManagedSubscribe(self, request_iterator: Any, context: Any) -> Any:
        """Not emulated (the pipeline subscribes with ``Subscribe`` and keeps its replay
        position in Kafka): after the authentication a real org does, UNIMPLEMENTED saying
        so, not the stub's bare "Method not implemented!"."""
        self.sb.counters.count("grpc_managed_subscribe")
        try:
            self.authenticate(context)
            raise _StreamError(grpc.StatusCode.UNIMPLEMENTED, "",
                               "ManagedSubscribe is not emulated by the sandbox (it serves "
                               "Subscribe, GetTopic, GetSchema, Publish and PublishStream)")
        except _StreamError as err:
            await self._abort(context, err)
        yield  # pragma: no cover - a stream's handler: an async generator

    async def Subscribe(self, request_iterator: Any, context: Any) -> Any:
        from .subscription import Subscription

        self.sb.counters.count("grpc_subscribe")
        sub = Subscription(self, request_iterator)
        try:
            sub.token = self.authenticate(context)
            injected = self.sb.faults.take_subscribe_error()
            if injected is not None:
                status, error_code = injected
                raise _StreamError(grpc.StatusCode[status], error_code,
                                   "injected by the sandbox" + (f": {error_code}"
                                                                if error_code else ""))
            self.check_allocation()
            async for response in sub.responses():
                yield response
        except _StreamError as err:
            self.sb.counters.count("grpc_stream_errors")
            await self._abort(context, err)
