"""``python -m sandbox.salesforce bench --orders N``: approval + gRPC delivery throughput.

Starts a sandbox subprocess in a temporary directory, seeds N orders, opens a Subscribe
stream (LATEST, 100 requested, topped up after every response as a real client does),
approves all N orders in one admin call and times until every event has arrived.
Prints one JSON line of figures. Runs in its own process, so it may use the package's
generated stubs.
"""

from __future__ import annotations

import json
import queue
import tempfile
import threading
import time

import grpc

from .generated import pubsub_api_pb2 as pb
from .generated import pubsub_api_pb2_grpc as pb_grpc
from .harness import running_sandbox


def main(orders: int = 10_000) -> int:
    with tempfile.TemporaryDirectory() as tmp, running_sandbox(tmp) as sf:
        started = time.perf_counter()
        sf.seed(accounts=200, orders=orders, broken_every=0)
        seed_s = time.perf_counter() - started
        token = sf.login()
        metadata = (("accesstoken", token["access_token"]), ("instanceurl", sf.instance_url),
                    ("tenantid", sf.org_id))
        channel = grpc.insecure_channel(sf.grpc_endpoint)
        stub = pb_grpc.PubSubStub(channel)
        requests: queue.Queue = queue.Queue()
        requests.put(pb.FetchRequest(topic_name="/event/OrderProvisionRequested__e",
                                     replay_preset=pb.LATEST, num_requested=100))

        def request_iter():
            while (item := requests.get()) is not None:
                yield item

        stream = stub.Subscribe(request_iter(), metadata=metadata)
        received = 0
        done = threading.Event()
        first_at: list[float] = []

        def consume() -> None:
            nonlocal received
            for response in stream:
                if response.events and not first_at:
                    first_at.append(time.perf_counter())
                received += len(response.events)
                if response.events:
                    requests.put(pb.FetchRequest(num_requested=len(response.events)))
                if received >= orders:
                    done.set()
                    return

        consumer = threading.Thread(target=consume, daemon=True)
        consumer.start()
        time.sleep(0.3)
        t0 = time.perf_counter()
        sf.approve(orders)
        approve_s = time.perf_counter() - t0
        done.wait(timeout=120)
        total_s = time.perf_counter() - t0
        requests.put(None)
        stream.cancel()
        channel.close()
        print(json.dumps({"orders": orders, "seed_s": round(seed_s, 2),
                          "approve_s": round(approve_s, 2),
                          "approve_and_deliver_s": round(total_s, 2), "delivered": received,
                          "events_per_s": round(received / total_s) if total_s else None}))
        return 0 if received >= orders else 1
