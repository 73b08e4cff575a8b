"""Fixtures of the sandbox tests. Salesforce ones are prefixed ``sf_``.

The Pub/Sub client used by the Salesforce tests is generated at test time from the
sandbox's ``.proto`` into a *private* descriptor pool (dynamic message classes, raw
method paths), so it never registers ``eventbus.v1`` in the process-wide pool that the
connector's own stubs use.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]
SF_PROTO_DIR = ROOT / "sandbox" / "salesforce" / "proto"
SF_TOPIC = "/event/OrderProvisionRequested__e"


@pytest.fixture(scope="session")
def sf_pb(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """Pub/Sub message classes built from the proto in a private descriptor pool."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
    from grpc_tools import protoc

    out = tmp_path_factory.mktemp("sf_pb") / "pubsub.desc"
    assert protoc.main(["protoc", f"-I{SF_PROTO_DIR}", f"--descriptor_set_out={out}",
                        "pubsub_api.proto"]) == 0
    pool = descriptor_pool.DescriptorPool()
    for fd in descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file:
        pool.Add(fd)
    ns = SimpleNamespace()
    for name in ("FetchRequest", "FetchResponse", "SchemaRequest", "SchemaInfo", "TopicRequest",
                 "TopicInfo", "PublishRequest", "PublishResponse", "ProducerEvent",
                 "ManagedFetchRequest", "ManagedFetchResponse"):
        setattr(ns, name, message_factory.GetMessageClass(
            pool.FindMessageTypeByName(f"eventbus.v1.{name}")))
    preset = pool.FindEnumTypeByName("eventbus.v1.ReplayPreset")
    for value in preset.values:
        setattr(ns, value.name, value.number)
    return ns


class SfSubscriber:
    """One Subscribe stream driven from a test: :meth:`fetch` sends, :meth:`next` receives."""

    def __init__(self, pb: Any, channel: grpc.Channel, metadata: tuple) -> None:
        self.pb = pb
        self.requests: queue.Queue = queue.Queue()
        self.responses: queue.Queue = queue.Queue()
        method = channel.stream_stream("/eventbus.v1.PubSub/Subscribe",
                                       request_serializer=lambda m: m.SerializeToString(),
                                       response_deserializer=pb.FetchResponse.FromString)
        self.call = method(iter(self.requests.get, None), metadata=metadata)
        self.thread = threading.Thread(target=self._pump, daemon=True)
        self.thread.start()

    def _pump(self) -> None:
        try:
            for response in self.call:
                self.responses.put(response)
            self.responses.put(("closed", self.call.code()))
        except grpc.RpcError as exc:
            self.responses.put(exc)

    def fetch(self, **fields: Any) -> None:
        self.requests.put(self.pb.FetchRequest(**fields))

    def next(self, timeout: float = 5.0) -> Any:
        """The next FetchResponse; raises the stream's RpcError; ("closed", code) at end."""
        item = self.responses.get(timeout=timeout)
        if isinstance(item, grpc.RpcError):
            raise item
        return item

    def events(self, count: int, timeout: float = 5.0) -> list[Any]:
        out: list[Any] = []
        while len(out) < count:
            response = self.next(timeout)
            assert not isinstance(response, tuple), f"stream closed after {len(out)} events"
            out.extend(response.events)
        return out

    def close(self) -> None:
        self.requests.put(None)
        self.call.cancel()


class SfPubSub:
    def __init__(self, pb: Any, sandbox: Any) -> None:
        self.pb, self.sandbox = pb, sandbox
        self.channel = grpc.insecure_channel(sandbox.grpc_endpoint)
        self.token = sandbox.login()["access_token"]
        self.subscribers: list[SfSubscriber] = []

    def metadata(self, token: str | None = None, tenant: str | None = None) -> tuple:
        return (("accesstoken", token or self.token), ("instanceurl", self.sandbox.instance_url),
                ("tenantid", tenant or self.sandbox.org_id))

    def subscribe(self, preset: int | None = None, num: int = 100, replay_id: bytes = b"",
                  topic: str = SF_TOPIC, **meta: Any) -> SfSubscriber:
        sub = SfSubscriber(self.pb, self.channel, self.metadata(**meta))
        sub.fetch(topic_name=topic, replay_preset=self.pb.LATEST if preset is None else preset,
                  replay_id=replay_id, num_requested=num)
        self.subscribers.append(sub)
        return sub

    def unary(self, name: str, request: Any, response_cls: Any, **meta: Any) -> Any:
        method = self.channel.unary_unary(f"/eventbus.v1.PubSub/{name}",
                                          request_serializer=lambda m: m.SerializeToString(),
                                          response_deserializer=response_cls.FromString)
        return method(request, metadata=self.metadata(**meta), timeout=10)

    def close(self) -> None:
        for sub in self.subscribers:
            sub.close()
        self.channel.close()


def sf_error_code(exc: grpc.RpcError) -> str | None:
    return dict(exc.trailing_metadata() or ()).get("error-code")


@pytest.fixture(scope="module")
def sf_sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A seeded sandbox subprocess shared by a test module (1 s keepalive, 4 s idle close)."""
    from sandbox.salesforce.harness import running_sandbox

    with running_sandbox(tmp_path_factory.mktemp("sf"), keepalive_s=1.0,
                         idle_close_s=4.0) as sandbox:
        sandbox.seed(accounts=20, orders=120)
        yield sandbox


@pytest.fixture
def sf_pubsub(sf_pb: SimpleNamespace, sf_sandbox: Any) -> Iterator[SfPubSub]:
    client = SfPubSub(sf_pb, sf_sandbox)
    yield client
    client.close()
    sf_sandbox.reset_faults()
    sf_sandbox.reset_permissions()  # not a fault (faults/reset keeps it): reset on its own


@pytest.fixture
def sf_http(sf_sandbox: Any) -> Iterator[requests.Session]:
    """A requests session trusting the sandbox CA, with a fresh bearer token."""
    session = requests.Session()
    session.trust_env = False  # REQUESTS_CA_BUNDLE would override session.verify
    session.verify = sf_sandbox.ca_path
    session.headers["Authorization"] = "Bearer " + sf_sandbox.login()["access_token"]
    yield session
    sf_sandbox.reset_faults()
    sf_sandbox.reset_permissions()
