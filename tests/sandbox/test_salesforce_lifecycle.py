"""Salesforce sandbox across time and restarts: retention purge, corrupted replay ids,
token lifetime on the sandbox clock, persistence, CLI, and the bench's complete delivery
(its timings are figures for the benchmarks, not asserted here)."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
import requests

from sandbox.salesforce.harness import running_sandbox
from tests.sandbox.conftest import SF_TOPIC, SfPubSub, SfSubscriber, sf_error_code

ROOT = Path(__file__).resolve().parents[2]
CORRUPTED = "sfdc.platform.eventbus.grpc.subscription.fetch.replayid.corrupted"
AUTH_ERROR = "sfdc.platform.eventbus.grpc.service.auth.error"


def _limits(sf: Any, token: str) -> int:
    return requests.get(sf.instance_url + "/services/data/v62.0/limits", verify=sf.ca_path,
                        headers={"Authorization": f"Bearer {token}"}).status_code


def test_retention_restart_and_token_lifetime(sf_pb: SimpleNamespace, tmp_path: Path) -> None:
    with running_sandbox(tmp_path / "sf", keepalive_s=1, token_lifetime_s=3600) as sf:
        sf.seed(accounts=6, orders=10, broken_every=5)
        token = sf.login()["access_token"]
        old_ids = sf.approve(2)
        sf.advance_clock(hours=50)
        new_id = sf.approve(1)[0]

        client = SfPubSub(sf_pb, sf)
        try:
            events = client.subscribe(sf_pb.EARLIEST, num=10).events(3)
            old_replay, new_replay = events[0].replay_id, events[2].replay_id
        finally:
            client.close()
        assert _limits(sf, token) == 401  # 50 h on the sandbox clock > 1 h token lifetime

        # Restart: records, events, org id and a fresh token all survive.
        org_id = sf.org_id
        token = sf.login()["access_token"]
        sf.restart()
        assert sf.org_id == org_id and _limits(sf, token) == 200
        assert sf.get_record(old_ids[0])["Activation_Status__c"] == "Activating"
        client = SfPubSub(sf_pb, sf)
        try:
            replayed = client.subscribe(sf_pb.CUSTOM, num=5, replay_id=old_replay).events(2)
            assert replayed[1].replay_id == new_replay

            sf.advance_clock(hours=23)  # the first two events are now older than 72 h
            client.token = sf.login()["access_token"]  # 23 h also outlived the token
            assert sf.events()["events"][0]["payload"]["OrderId__c"] == new_id
            sub = client.subscribe(sf_pb.CUSTOM, num=5, replay_id=old_replay)
            with pytest.raises(grpc.RpcError) as info:
                sub.next(timeout=5)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert sf_error_code(info.value) == CORRUPTED
            [only] = client.subscribe(sf_pb.EARLIEST, num=5).events(1)
            assert only.replay_id == new_replay
        finally:
            client.close()


def test_seeded_broken_orders_and_cli(tmp_path: Path) -> None:
    with running_sandbox(tmp_path / "sf") as sf:
        created = sf.seed(accounts=5, orders=30, broken_every=5)["orders"]
        broken = {o["broken"] for o in created if o["broken"]}
        assert {"MISSING_WHMCS_CLIENT", "WHMCS_CLIENT_NOT_FOUND", "MISSING_PRODUCT_MAPPING",
                "INVALID_CONFIG_OPTIONS", "NO_ITEMS"} <= broken
        missing = next(o for o in created if o["broken"] == "MISSING_WHMCS_CLIENT")
        row = sf.query("SELECT Account.WH_Account__c, (SELECT Id FROM OrderItems) FROM Order "
                       f"WHERE Id = '{missing['order_id']}'")["records"][0]
        assert row["Account"]["WH_Account__c"] is None and row["OrderItems"]["totalSize"] >= 1

        def cli(*args: str) -> Any:
            proc = subprocess.run([sys.executable, "-m", "sandbox.salesforce", "--dir",
                                   str(sf.dir), *args], cwd=ROOT, capture_output=True,
                                  text=True, timeout=60)
            assert proc.returncode == 0, proc.stderr
            return json.loads(proc.stdout)

        approved = cli("approve", "--count", "3")
        assert approved["approved"] == 3
        shown = cli("show", approved["ids"][0])["records"][0]
        assert shown["Activation_Status__c"] == "Activating"
        assert cli("faults", "--set", "rest_latency_ms=5")["faults"]["rest_latency_ms"] == 5
        assert cli("counters")["events_stored"] == 3
        assert cli("clock", "advance", "1")["purged"] == 0


@pytest.mark.slow
def test_bench_delivers_every_one_of_10k_approvals() -> None:
    """The bench run completes and every approved order's event reaches the subscriber;
    its timings are printed for the benchmarks, not asserted (speed is not a test's claim)."""
    proc = subprocess.run([sys.executable, "-m", "sandbox.salesforce", "bench", "--orders",
                           "10000"], cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    print("salesforce sandbox bench:", figures)
    assert figures["orders"] == 10000
    assert figures["delivered"] == 10000


def test_a_session_times_out_after_it_was_last_used(tmp_path: Path) -> None:
    """The token lives as long as the session timeout *idle* (REFERENCE §2): a session in use
    outlives its first hour, one left alone for the timeout does not; a use renews it only
    past half of the timeout, as an org does."""
    with running_sandbox(tmp_path / "sf", token_lifetime_s=3600) as sf:
        token = sf.login()["access_token"]
        sf.advance_clock(seconds=20 * 60)
        assert _limits(sf, token) == 200  # 20 min: within the first half, not renewed
        sf.advance_clock(seconds=41 * 60)
        assert _limits(sf, token) == 401  # 61 min after issue: the use at 20 min renewed nothing
        token = sf.login()["access_token"]
        for _ in range(3):  # used every 40 min: renewed each time, alive after 2 h
            sf.advance_clock(seconds=40 * 60)
            assert _limits(sf, token) == 200
        sf.advance_clock(seconds=61 * 60)  # then idle past the timeout
        assert _limits(sf, token) == 401


def _drained(sub: SfSubscriber) -> list[Any]:
    """What ``sub`` received so far: FetchResponses, then an RpcError or ("closed", code)."""
    out: list[Any] = []
    while True:
        try:
            out.append(sub.responses.get_nowait())
        except queue.Empty:
            return out


def test_server_keepalives_do_not_renew_a_session_client_fetches_do(
        sf_pb: SimpleNamespace, tmp_path: Path) -> None:
    """A stream's own keepalives are not use of the session (REFERENCE §1, §2: a token
    expires mid-stream): a subscriber that sends nothing after its first FetchRequest is cut
    with UNAUTHENTICATED at the first keepalive after its 6 s session ran out, and the token
    is dead for unary calls too. One sending a FetchRequest every 2 s renews it (a use past
    half of the timeout) and its stream lives on. Both streams run side by side."""
    with running_sandbox(tmp_path / "sf", token_lifetime_s=6, keepalive_s=1,
                         idle_close_s=60) as sf:
        quiet_client, busy_client = SfPubSub(sf_pb, sf), SfPubSub(sf_pb, sf)
        try:
            quiet, busy = quiet_client.subscribe(num=10), busy_client.subscribe(num=10)
            start = time.monotonic()
            next_fetch, quiet_end, busy_last = start + 2, None, 0.0
            while True:
                time.sleep(0.2)
                elapsed = time.monotonic() - start
                # until the fetching stream had a keepalive 2 s after the quiet one ended
                # (its session would have run out too by then), or 20 s
                if elapsed >= 20 or (quiet_end is not None and busy_last >= quiet_end[1] + 2):
                    break
                if time.monotonic() >= next_fetch:
                    busy.fetch(num_requested=1)
                    next_fetch += 2
                for item in _drained(busy):
                    assert isinstance(item, sf_pb.FetchResponse), (
                        f"the fetching stream ended after {elapsed:.1f} s: {item}")
                    busy_last = elapsed
                if quiet_end is None:
                    ends = [i for i in _drained(quiet) if not isinstance(i, sf_pb.FetchResponse)]
                    quiet_end = (ends[0], elapsed) if ends else None

            assert quiet_end is not None, "keepalives kept an unused 6 s session alive for 20 s"
            error, ended_at = quiet_end
            assert isinstance(error, grpc.RpcError), error
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED
            assert sf_error_code(error) == AUTH_ERROR
            assert 5 <= ended_at < 14, ended_at
            assert busy_last >= ended_at + 2, (
                f"the fetching stream's last keepalive came at {busy_last} s")

            topic = sf_pb.TopicRequest(topic_name=SF_TOPIC)
            with pytest.raises(grpc.RpcError) as info:
                quiet_client.unary("GetTopic", topic, sf_pb.TopicInfo)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert sf_error_code(info.value) == AUTH_ERROR
            assert busy_client.unary("GetTopic", topic, sf_pb.TopicInfo).topic_name == SF_TOPIC
        finally:
            quiet_client.close()
            busy_client.close()
