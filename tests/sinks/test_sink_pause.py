"""Two sink processes in one group; one is frozen (SIGSTOP) past its session timeout while
it holds a write, the other takes its partitions and writes newer outcomes, then the frozen
one resumes (SIGCONT) and its stale write reaches Salesforce (issue 14, item 4).

Making the stale write deterministic: sink A flushes only when its batch is exactly the
first wave's records (``SINK_BATCH_SIZE`` = that count, a 600 s linger, no idle flush),
and the Salesforce sandbox *holds* that one PATCH (``hold_collection_calls=1``) — A is
then provably inside its write when it is frozen. The test releases the PATCH after A is
resumed and sink B has written everything, so Salesforce sees A's write last: the fence
must refuse it per record; with the fence off, the stale values must land (so the test can
see the bug it guards against).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from common.settings import KafkaSettings, SinkSettings
from ops.kafka_local import free_port
from sandbox.salesforce.harness import SalesforceSandbox, running_sandbox
from tests.sinks.helpers import committed_total, dead_letters, outcome, produce
from tests.sinks.sandbox_support import expected_state, mismatches, sink_env, start_sink

pytestmark = [pytest.mark.broker, pytest.mark.e2e]
GROUPS = 10  # Orders re-approved (Failed → Provisioned), and Opportunities shared by 2 Orders


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[SalesforceSandbox]:
    with running_sandbox(tmp_path / "sf") as sf:
        yield sf


def waves(orders: list[dict[str, Any]]) -> tuple[list[dict], list[dict]]:
    """Wave 1, then wave 2 decided later (its completed_at is newer):

    * Orders r: Failed, then re-approved and Provisioned;
    * Opportunities shared by Orders x and y: x Provisioned (service 1000+j), then y
      Provisioned (service 2000+j) — the Opportunity must keep y's service.
    """
    r, x, y = orders[:GROUPS], orders[GROUPS:2 * GROUPS], orders[2 * GROUPS:3 * GROUPS]
    first = [outcome(o["order_id"], "Failed", opportunity_id=o["opportunity_id"], n=j)
             for j, o in enumerate(r)]
    first += [outcome(o["order_id"], "Provisioned", opportunity_id=o["opportunity_id"],
                      n=100 + j, whmcs_service_ids=[1000 + j]) for j, o in enumerate(x)]
    time.sleep(0.01)  # wave 2 is decided strictly later, to the millisecond
    second = [outcome(o["order_id"], "Provisioned", opportunity_id=o["opportunity_id"],
                      n=200 + j) for j, o in enumerate(r)]
    second += [outcome(o["order_id"], "Provisioned", opportunity_id=x[j]["opportunity_id"],
                       n=300 + j, whmcs_service_ids=[2000 + j]) for j, o in enumerate(y)]
    assert min(o["completed_at"] for o in second) > max(o["completed_at"] for o in first)
    return first, second


def wait_for(predicate: Callable[[], Any], timeout: float, what: str,
             *procs: subprocess.Popen[bytes]) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        for proc in procs:
            if proc.poll() is not None:
                raise AssertionError(f"a sink exited ({proc.returncode}) waiting for {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def health(port: int) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return json.loads(exc.read())
    except OSError:
        return {}


def metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return resp.read().decode()


@pytest.mark.parametrize("fence", [True, False], ids=["fence-on", "fence-off"])
def test_a_sink_resumed_after_a_pause_does_not_write_older_outcomes_over_newer(
        fence: bool, sandbox: SalesforceSandbox, kafka_settings: KafkaSettings,
        tmp_path: Path) -> None:
    orders = sandbox.seed(accounts=10, orders=3 * GROUPS)["orders"]
    first, second = waves(orders)
    held_records = len(expected_state(first))  # Orders r and x, Opportunities of x
    settings = SinkSettings.load({})
    session_ms = 6000
    common = {"SINK_SESSION_TIMEOUT_MS": session_ms, "SINK_OUTCOME_FENCE": str(fence).lower()}
    port_a, port_b = free_port(), free_port()
    env_a = sink_env(kafka_settings, sandbox.env(), SINK_HTTP_PORT=port_a,
                     SINK_BATCH_SIZE=held_records, SINK_LINGER_S=600, SINK_IDLE_FLUSH_S=0,
                     SF_TIMEOUT_S=600, **common)  # its held PATCH must not time out
    env_b = sink_env(kafka_settings, sandbox.env(), SINK_HTTP_PORT=port_b, **common)
    log_a, log_b = tmp_path / "sink-a.log", tmp_path / "sink-b.log"

    sandbox.set_faults(hold_collection_calls=1)
    produce(kafka_settings, first)
    sink_a = start_sink(env_a, log_a)
    sink_b: subprocess.Popen[bytes] | None = None
    try:
        # 1. A consumed wave 1 and is inside its one PATCH, held by Salesforce
        wait_for(lambda: sandbox.counters()["held_calls"] == [held_records], 60,
                 "sink A's write of wave 1 to be held", sink_a)
        # 2. A freezes (a GC pause, a stopped VM) past its session timeout
        os.kill(sink_a.pid, signal.SIGSTOP)
        frozen_at = time.monotonic()
        # 3. B takes every partition once A's session expired, writes wave 1, then wave 2
        sink_b = start_sink(env_b, log_b)
        wait_for(lambda: committed_total(kafka_settings, settings) == len(first), 90,
                 "sink B to write wave 1", sink_b)
        assert time.monotonic() - frozen_at > session_ms / 1000  # A's session had expired
        produce(kafka_settings, second)
        wait_for(lambda: committed_total(kafka_settings, settings) == len(first) + len(second),
                 60, "sink B to write wave 2", sink_b)
        newest = expected_state(first + second)
        assert mismatches(sandbox, newest) == []
        # 4. A resumes and its stale PATCH reaches Salesforce, after everything B wrote
        os.kill(sink_a.pid, signal.SIGCONT)
        assert sandbox.release_held() == 1
        wait_for(lambda: sandbox.counters()["held_calls"] == [], 30, "the stale PATCH")
        done = wait_for(lambda: (lambda h: h if h.get("superseded", 0)
                                 + h.get("records_written", 0) >= held_records else None)(
            health(port_a)), 60, "sink A to settle its stale write", sink_a)
        if fence:
            # every record B had since written newer was refused; x's Orders (nothing newer)
            # were rewritten with the same outcome
            assert mismatches(sandbox, newest) == []
            assert done["superseded"] == 2 * GROUPS and done["records_written"] == GROUPS
            text = metrics(port_a)
            assert f'sfprov_sink_superseded_total{{sobject="Order"}} {GROUPS}.0' in text
            assert f'sfprov_sink_superseded_total{{sobject="Opportunity"}} {GROUPS}.0' in text
        else:
            # the bug the fence closes: wave 1 landed over wave 2
            stale = mismatches(sandbox, newest)
            assert mismatches(sandbox, expected_state(first + second + first)) == []
            assert len({line.split(" ")[1] for line in stale}) == 2 * GROUPS, stale
            assert done["records_written"] == held_records and done["superseded"] == 0
    finally:
        if sink_a.poll() is None:
            os.kill(sink_a.pid, signal.SIGCONT)  # a stopped process ignores SIGTERM
        sandbox.release_held()
        codes = [stop(p) for p in (sink_a, sink_b) if p is not None]
    assert codes == [0, 0], log_a.read_text()[-3000:] + log_b.read_text()[-3000:]
    assert dead_letters(kafka_settings, expected=0, timeout=2) == []  # superseded ≠ refused
    assert committed_total(kafka_settings, settings) == len(first) + len(second)
    final = expected_state(first + second) if fence else expected_state(first + second + first)
    assert mismatches(sandbox, final) == []  # still so after A rejoined and both drained
    if fence:
        assert "not written: Salesforce holds a newer outcome (superseded)" in log_a.read_text()


def stop(proc: subprocess.Popen[bytes]) -> int | None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return None
    return proc.returncode


def test_an_org_without_the_fence_field_stops_the_sink_before_it_consumes(
        sandbox: SalesforceSandbox, kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    [order] = sandbox.seed(accounts=4, orders=1)["orders"]
    produce(kafka_settings, [outcome(order["order_id"], "Failed")])
    env = sink_env(kafka_settings, sandbox.env(), SINK_OUTCOME_MS_FIELD="Missing_Outcome_Ms__c")
    log = tmp_path / "sink.log"
    proc = start_sink(env, log, "--timeout", "60")
    assert proc.wait(timeout=90) == 64, log.read_text()[-3000:]
    errors = [line for line in log.read_text().splitlines() if "configuration error" in line]
    assert len(errors) == 1 and ("SINK_OUTCOME_MS_FIELD: Order.Missing_Outcome_Ms__c does not "
                                 "exist in the org") in errors[0]
    assert "SINK_OUTCOME_FENCE=false" in errors[0]
    assert sandbox.counters()["calls"].get("composite_sobjects", 0) == 0
    assert committed_total(kafka_settings, SinkSettings.load({})) == 0
