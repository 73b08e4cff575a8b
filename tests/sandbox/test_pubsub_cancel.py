"""Salesforce sandbox Pub/Sub: a Subscribe call the client cancels is gone at once.

Real Salesforce neither delivers to nor counts a cancelled stream. The sandbox must drop it
from ``open_streams`` and its store listeners right away — not linger until its next
keepalive (270 s by default) and then allocate, count and "deliver" up to 100 events into
the dead call (inflating ``events_delivered_24h`` against the delivery allocation). A
client that only half-closes its request stream while still reading is not gone: it keeps
receiving what it requested (REFERENCE §1: ``num_requested`` is outstanding credit).

This module's sandbox has a 20 s keepalive, longer than any wait here, so a stream that
lingers is not ended early by a keepalive send into the dead call.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.sandbox.conftest import SfPubSub


@pytest.fixture(scope="module")
def sf_sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from sandbox.salesforce.harness import running_sandbox

    with running_sandbox(tmp_path_factory.mktemp("sf_cancel"), keepalive_s=20.0,
                         idle_close_s=60.0) as sandbox:
        sandbox.seed(accounts=5, orders=60, broken_every=0)
        yield sandbox


def _until(check: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


def _open(sf: Any) -> int:
    return int(sf.counters()["open_streams"])


def _delivered(sf: Any) -> int:
    return int(sf.counters()["events_delivered_24h"])


def test_a_cancelled_subscribe_is_closed_at_once_and_counts_nothing(
        sf_pubsub: SfPubSub, sf_sandbox: Any) -> None:
    base = _open(sf_sandbox)
    sub = sf_pubsub.subscribe(num=100)  # caught up (LATEST), 100 requested: credit left
    assert _until(lambda: _open(sf_sandbox) == base + 1, 5), "the stream never opened"
    delivered = _delivered(sf_sandbox)

    sub.call.cancel()
    assert _until(lambda: _open(sf_sandbox) == base, 1.5), \
        f"a cancelled stream is still open: open_streams {_open(sf_sandbox)}"

    sf_sandbox.approve(5)  # the Flow publishes five events: nobody is listening
    time.sleep(1)
    assert _delivered(sf_sandbox) == delivered, "events were counted for a cancelled stream"
    assert _open(sf_sandbox) == base


def test_only_the_live_stream_is_delivered_to_and_counted(
        sf_pubsub: SfPubSub, sf_sandbox: Any) -> None:
    base = _open(sf_sandbox)
    live, gone = sf_pubsub.subscribe(num=100), sf_pubsub.subscribe(num=100)
    assert _until(lambda: _open(sf_sandbox) == base + 2, 5), "the streams never opened"
    delivered = _delivered(sf_sandbox)

    gone.call.cancel()
    assert _until(lambda: _open(sf_sandbox) == base + 1, 1.5), "the cancelled stream lingers"
    sf_sandbox.approve(5)
    assert len(live.events(5, timeout=10)) == 5
    time.sleep(1)
    assert _delivered(sf_sandbox) == delivered + 5  # the live stream's five, not ten


def test_a_half_closed_stream_still_receives_what_it_requested(
        sf_pubsub: SfPubSub, sf_sandbox: Any) -> None:
    """Half-closing the request stream is not a cancel: the three requested events are
    delivered, then (nothing requested, no more requests possible) the stream ends OK."""
    import grpc

    base = _open(sf_sandbox)
    sub = sf_pubsub.subscribe(num=3)
    assert _until(lambda: _open(sf_sandbox) == base + 1, 5), "the stream never opened"
    delivered = _delivered(sf_sandbox)
    sub.requests.put(None)  # half-close: no more FetchRequests, still reading
    time.sleep(0.5)
    assert _open(sf_sandbox) == base + 1, "a half-closed stream was closed"

    sf_sandbox.approve(3)
    assert len(sub.events(3, timeout=10)) == 3
    assert sub.next(timeout=10) == ("closed", grpc.StatusCode.OK)
    assert _until(lambda: _open(sf_sandbox) == base, 2)
    assert _delivered(sf_sandbox) == delivered + 3



_SWALLOW_CHECK = """
import asyncio
from sandbox.salesforce.subscription import _wait

async def scenario():
    wake = asyncio.Event()
    waiting = asyncio.create_task(_wait(wake, 30.0))
    await asyncio.sleep(0)  # the task now waits on ``wake``
    wake.set()
    waiting.cancel()  # in the same loop turn
    try:
        await waiting
    except asyncio.CancelledError:
        pass
    else:
        raise SystemExit("the cancellation was swallowed")
    wake.clear()  # and a timeout is still just a timeout
    await asyncio.wait_for(_wait(wake, 0.05), timeout=5)

asyncio.run(scenario())
"""


def test_a_cancel_in_the_turn_the_stream_wakes_is_not_swallowed() -> None:
    """The cause: a client's cancel ends the request stream (the reader wakes the writer)
    and gRPC cancels the handler in the same loop turn; the writer's wait must let that
    cancellation through (``asyncio.wait_for`` before Python 3.12 returned instead). In a
    subprocess: importing the sandbox's generated stubs here would clash with the
    connector's in the process-wide descriptor pool (see conftest)."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", _SWALLOW_CHECK], cwd=root, timeout=60,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr or done.stdout
