"""The pipeline bounds its waits with ``asyncio.timeout``, never ``asyncio.wait_for``.

On Python 3.11 ``wait_for`` returns its inner result and drops a cancellation that arrives in
the loop turn the inner wait completes: a WHMCS call cancelled as it got its connection
slot went on and wrote its request (``test_http_transport``'s two cancel tests show it), the
Pub/Sub sandbox's cancelled streams lived on. ``asyncio.timeout`` delivers the cancel."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PIPELINE = ("common", "connectors", "streams", "sinks", "ops", "sandbox")
CALL = re.compile(r"\basyncio\.wait_for\(|\bfrom asyncio import .*\bwait_for\b")


def test_no_pipeline_module_waits_with_asyncio_wait_for():
    found = [f"{path.relative_to(ROOT)}:{n}"
             for top in PIPELINE for path in sorted((ROOT / top).rglob("*.py"))
             if "generated" not in path.parts
             for n, line in enumerate(path.read_text().splitlines(), 1)
             if CALL.search(line)]
    assert found == [], f"asyncio.wait_for can drop a cancellation; use asyncio.timeout: {found}"


def test_the_check_sees_a_wait_for():
    assert CALL.search("        await asyncio.wait_for(slots.acquire(), 5)")
    assert CALL.search("from asyncio import sleep, wait_for")
    assert not CALL.search("            wait_for_ready=None,")
