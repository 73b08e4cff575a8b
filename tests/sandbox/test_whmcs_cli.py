"""The ``python -m sandbox.whmcs`` commands and the throughput figure."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sandbox.whmcs.bench import run_bench
from sandbox.whmcs.harness import WhmcsSandbox, whmcs_sandbox

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def whmcs_sb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WhmcsSandbox]:
    with whmcs_sandbox(tmp_path_factory.mktemp("whmcs-cli"), accounts=200) as wh:
        yield wh


def whmcs_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sandbox.whmcs", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False)


def whmcs_cli_json(*args: str) -> Any:
    proc = whmcs_cli(*args)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_seed_command(tmp_path: Path) -> None:
    db = tmp_path / "w.db"
    out = whmcs_cli_json("seed", "--accounts", "30", "--db", str(db))
    assert out == {"clients": 28, "products": 6, "addons": 2}  # minus missing + unknown
    assert whmcs_cli_json("seed", "--accounts", "40", "--db", str(db))["clients"] == 38


def test_faults_orders_counters_commands(whmcs_sb: WhmcsSandbox) -> None:
    url = whmcs_sb.api_url
    shown = whmcs_cli_json("faults", "set", "AddOrder", "hang_rate=1", "hang_s=2", "times=1",
                           "--url", url)
    assert shown["faults"]["addorder"]["hang_rate"] == 1
    assert whmcs_sb.faults()["faults"]["addorder"]["times"] == 1
    assert whmcs_cli("faults", "set", "AddOrder", "bogus=1", "--url", url).returncode != 0
    assert whmcs_cli_json("faults", "clear", "--url", url)["faults"] == {}
    whmcs_sb.call("AddOrder", clientid=1010, paymentmethod="mailin", pid=[1],
                  notes="sfOrderId=801CLI000000000001")
    orders = whmcs_cli_json("orders", "--sf-order-id", "801CLI000000000001", "--url", url)
    assert [o["userid"] for o in orders["orders"]] == [1010]
    counters = whmcs_cli_json("counters", "--url", url)
    assert counters["orders_by_marker"]["801CLI000000000001"] == 1


def test_throughput_figure(whmcs_sb: WhmcsSandbox) -> None:
    """Prints AddOrder+AcceptOrder pairs/s; asserts correctness, not timing."""
    auth = {"identifier": whmcs_sb.identifier, "secret": whmcs_sb.secret,
            "responsetype": "json"}
    before = whmcs_sb.counters()["orders_created"]
    result = asyncio.run(run_bench(whmcs_sb.api_url, auth, pairs=2000, concurrency=32))
    print(f"\nWHMCS sandbox: {result.pairs_per_s:,.0f} AddOrder+AcceptOrder pairs/s "
          f"({result.pairs} pairs in {result.seconds:.2f} s)")
    assert (result.pairs, result.errors) == (2000, 0)
    assert whmcs_sb.counters()["orders_created"] - before == 2000
    assert whmcs_sb.duplicates() == {}
    active = whmcs_sb.call("GetOrders", status="Active", limitnum=1)
    assert active["totalresults"] >= 2000
