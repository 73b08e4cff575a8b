"""One Pub/Sub API connection: the channel, auth metadata, GetSchema and Subscribe streams.

Contracts and pitfalls:

* **One subscription at a time.** :meth:`PubSubClient.subscribe` returns a
  :class:`Subscription`; the caller cancels it before opening the next, so a reconnect can
  never leave two live streams (a problem users of other clients report).
* **Delivery order.** One reader thread iterates the response stream and puts each
  ``FetchResponse`` on a queue in arrival order; the processing loop is the only consumer.
  No callbacks run concurrently, so events are never reordered.
* **Flow control** (:mod:`connectors.pubsub.flow`): the first FetchRequest asks for up to
  ``num_requested``; more are asked for as events are delivered and consumed, never more
  than 100 outstanding and never more than the buffer bound.
* **The replay position counts only in the first FetchRequest** of a stream; moving
  elsewhere means cancelling and subscribing again.
* **Errors end the stream.** The reader puts a :class:`StreamEnded` carrying the classified
  exception (:mod:`connectors.pubsub.errors`) on the queue; the caller decides how to
  resubscribe (always from the last committed position).
* **TLS** by default with ``grpc.ssl_channel_credentials`` (``SF_CA_BUNDLE`` is trusted in
  addition to gRPC's bundled roots); plaintext only with ``SF_PUBSUB_TLS=false``. HTTP/2
  keepalive pings find half-open connections; the caller's watchdog finds silent streams.
* The access token travels in call metadata only and is never logged.
* **Connected** (:meth:`PubSubClient.connected`): the channel's connectivity, followed with
  ``channel.subscribe``. gRPC fails a stream to an endpoint that never completes the HTTP/2
  handshake (a firewall dropping packets, a blackhole, a TCP peer that says nothing) only at
  its ~20 s connect timeout; until then the stream looks open and unrefused. The caller
  counts such a stream as accepted only once the channel is ``READY``. Following it takes a
  gRPC polling thread, whose pending poll a channel closed during the interpreter's
  finalization waits for for ever (daemon threads no longer run then): the channel is closed
  by :meth:`PubSubClient.close`, when the client is collected, or at exit (``atexit``).
"""

from __future__ import annotations

import logging
import queue
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from common.errors import SalesforceError
from common.salesforce import SalesforceAuth, Token
from common.settings import ConnectorSettings, SalesforceSettings
from connectors.pubsub.errors import classify
from connectors.pubsub.flow import FlowControl
from connectors.pubsub.generated import pubsub_api_pb2 as pb
from connectors.pubsub.generated import pubsub_api_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

PRESETS = {"LATEST": pb.LATEST, "EARLIEST": pb.EARLIEST, "CUSTOM": pb.CUSTOM}


def channel_options(keepalive_s: float) -> list[tuple[str, Any]]:
    """HTTP/2 pings every ``keepalive_s`` (``SF_PUBSUB_GRPC_KEEPALIVE_S``) while a call is
    open, to find a half-open connection: a gRPC server's default policy allows one ping
    without data per 5 minutes and ends the connection (GOAWAY ``too_many_pings``) after two
    more, so a quiet stream pinged every 60 s died at 240 s, before the first keepalive
    could come (270 s). None while no call is open (a limit wait)."""
    return [
        ("grpc.keepalive_time_ms", int(keepalive_s * 1000)),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.keepalive_permit_without_calls", 0),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    ]


def _root_certificates(ca_bundle: str) -> bytes | None:
    if not ca_bundle:
        return None  # gRPC's bundled roots
    extra = Path(ca_bundle).read_bytes()
    bundled = Path(grpc.__file__).parent / "_cython" / "_credentials" / "roots.pem"
    return (bundled.read_bytes() + b"\n" + extra) if bundled.is_file() else extra


def make_channel(connector: ConnectorSettings, salesforce: SalesforceSettings) -> grpc.Channel:
    options = channel_options(connector.grpc_keepalive_s)
    if not connector.pubsub_tls:
        return grpc.insecure_channel(connector.pubsub_endpoint, options=options)
    creds = grpc.ssl_channel_credentials(root_certificates=_root_certificates(salesforce.ca_bundle))
    return grpc.secure_channel(connector.pubsub_endpoint, creds, options=options)


def auth_metadata(token: Token) -> list[tuple[str, str]]:
    return [("accesstoken", token.access_token.reveal()), ("instanceurl", token.instance_url),
            ("tenantid", token.org_id)]


@dataclass
class StreamEnded:
    """Queue item: the stream is over (``error`` None = the server closed it cleanly)."""

    error: SalesforceError | None


class Subscription:
    """A live Subscribe stream. Read :attr:`responses`; call :meth:`consumed`; :meth:`cancel`."""

    def __init__(self, stub: pb_grpc.PubSubStub, metadata: list[tuple[str, str]], topic: str,
                 preset: str, replay_id: bytes | None, flow: FlowControl, *,
                 connected: Callable[[], bool], limit_backoff_s: float = 300.0) -> None:
        self.topic = topic
        self.flow = flow
        #: whether the stream's channel is connected now (:meth:`PubSubClient.connected`)
        self.connected = connected
        self.responses: queue.Queue[Any] = queue.Queue()
        self._requests: queue.Queue[pb.FetchRequest | None] = queue.Queue()
        self._cancelled = threading.Event()
        self._limit_backoff_s = limit_backoff_s
        first = pb.FetchRequest(topic_name=topic, replay_preset=PRESETS[preset],
                                num_requested=flow.initial())
        if preset == "CUSTOM":
            first.replay_id = replay_id or b""
        self._requests.put(first)
        self._call = stub.Subscribe(self._request_iter(), metadata=metadata)
        self._reader = threading.Thread(target=self._read, name="pubsub-reader", daemon=True)
        self._reader.start()

    def _request_iter(self) -> Any:
        while True:
            item = self._requests.get()
            if item is None:
                return
            yield item

    def _ask(self, count: int) -> None:
        if count > 0 and not self._cancelled.is_set():
            self._requests.put(pb.FetchRequest(topic_name=self.topic, num_requested=count))

    def _read(self) -> None:
        end = StreamEnded(None)
        try:
            for response in self._call:
                self._ask(self.flow.delivered(len(response.events)))
                self.responses.put(response)
        except grpc.RpcError as exc:
            if not self._cancelled.is_set():
                end = StreamEnded(classify(exc, limit_backoff_s=self._limit_backoff_s))
        except Exception as exc:  # noqa: BLE001 - anything else still ends the stream visibly
            end = StreamEnded(SalesforceError(f"Pub/Sub reader failed: {exc!r}", retryable=True))
        self.responses.put(end)

    def consumed(self, count: int) -> None:
        """The caller has written ``count`` delivered events; ask for more if there is room."""
        self._ask(self.flow.consumed(count))

    def cancel(self) -> None:
        """Stop the stream; undelivered and unconsumed events are dropped (resume re-fetches)."""
        self._cancelled.set()
        self._requests.put(None)
        self._call.cancel()
        self._reader.join(timeout=5)


class _Connectivity:
    """The channel's last connectivity state, set from gRPC's polling thread. Apart from the
    client, so the channel's subscription does not keep the client (and its channel) alive."""

    def __init__(self) -> None:
        self.state: grpc.ChannelConnectivity | None = None

    def __call__(self, state: grpc.ChannelConnectivity) -> None:
        self.state = state


def _close_channel(channel: grpc.Channel, connectivity: _Connectivity) -> None:
    channel.unsubscribe(connectivity)
    channel.close()


class PubSubClient:
    """Channel + stub + auth. Thread-safe for GetSchema; one Subscription at a time."""

    def __init__(self, connector: ConnectorSettings, salesforce: SalesforceSettings,
                 auth: SalesforceAuth, *, channel: grpc.Channel | None = None) -> None:
        self.settings = connector
        self.auth = auth
        self._channel = channel or make_channel(connector, salesforce)
        self._connectivity = _Connectivity()
        # follows the state only: connecting is the calls' business (try_to_connect=False)
        self._channel.subscribe(self._connectivity, try_to_connect=False)
        # closed by close(), or when collected, or at exit while gRPC's threads still run
        self._closer = weakref.finalize(self, _close_channel, self._channel,
                                        self._connectivity)
        self.stub = pb_grpc.PubSubStub(self._channel)
        self.token: Token | None = None

    def _metadata(self) -> list[tuple[str, str]]:
        self.token = self.auth.token()
        return auth_metadata(self.token)

    def login(self) -> None:
        """Log in to Salesforce now, if no token is cached (the next :meth:`subscribe` uses
        it). Raises the login's :class:`~common.errors.SalesforceAuthError` (refused) or
        SalesforceError (the token endpoint out of reach)."""
        self.token = self.auth.token()

    def connected(self) -> bool:
        """The channel is connected (``READY``: the TCP, TLS and HTTP/2 handshakes done):
        a stream opened on it has reached Salesforce."""
        return self._connectivity.state == grpc.ChannelConnectivity.READY

    def refresh_auth(self) -> None:
        """Assert again (the stored token was refused)."""
        self.token = self.auth.refresh(self.token)

    def subscribe(self, preset: str, replay_id: bytes | None = None) -> Subscription:
        flow = FlowControl(self.settings.num_requested, self.settings.max_buffered)
        return Subscription(self.stub, self._metadata(), self.settings.channel, preset,
                            replay_id, flow, connected=self.connected,
                            limit_backoff_s=self.settings.limit_backoff_s)

    def get_schema(self, schema_id: str, *, timeout: float = 30.0) -> str:
        """Avro schema JSON of ``schema_id``; raises the classified error on failure."""
        try:
            info = self.stub.GetSchema(pb.SchemaRequest(schema_id=schema_id),
                                       metadata=self._metadata(), timeout=timeout)
        except grpc.RpcError as exc:
            raise classify(exc, limit_backoff_s=self.settings.limit_backoff_s) from exc
        return str(info.schema_json)

    def close(self) -> None:
        self._closer()  # once: a second close does nothing
