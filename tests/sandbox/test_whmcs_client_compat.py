"""The pipeline's own WHMCS client (``common.whmcs``) works against the sandbox unchanged.

A contract test between two parts built in parallel from REFERENCE §4: when it breaks,
either the sandbox or the client has drifted from the wire format.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from common.errors import WhmcsError, WhmcsTransientError, WhmcsUnknownResultError
from common.settings import WhmcsSettings
from common.whmcs import WhmcsClient
from sandbox.whmcs import phpserial
from sandbox.whmcs.harness import whmcs_sandbox

SF_ORDER = "801COMPAT000000001"


def test_pipeline_client_against_sandbox(tmp_path: Path) -> None:
    with whmcs_sandbox(tmp_path, accounts=20) as wh:
        settings = WhmcsSettings.load(wh.env())

        async def scenario() -> None:
            async with WhmcsClient(settings, timeout_s=1.0) as client:
                made = await client.add_order({
                    "clientid": 1005, "paymentmethod": "mailin", "pid": [1, 5],
                    "billingcycle": ["monthly", "onetime"], "qty": [1, 1],
                    "configoptions": [phpserial.b64dumps({1: 2}), None],
                    "noemail": True, "notes": f"sfOrderId={SF_ORDER}"})
                assert len(made.service_ids) == 2 and made.invoice_id
                await client.accept_order(made.order_id, autosetup=True)
                with pytest.raises(WhmcsError, match="not Pending"):
                    await client.accept_order(made.order_id)
                found = await client.find_orders_by_marker(1005, SF_ORDER)
                assert [o.id for o in found] == [made.order_id]
                assert found[0].status == "Active" and found[0].service_ids == made.service_ids
                products = await client.get_clients_products(client_id=1005)
                assert {int(p["id"]) for p in products} == set(made.service_ids)

                wh.set_faults("AddOrder", hang_rate=1.0, hang_s=3, times=1)
                with pytest.raises(WhmcsUnknownResultError):
                    await client.add_order({"clientid": 1005, "paymentmethod": "mailin",
                                            "pid": [3], "notes": "sfOrderId=801COMPAT000000002"})
                assert len(await client.find_orders_by_marker(1005, "801COMPAT000000002")) == 1

                wh.set_faults("GetOrders", error_rate=1.0, error_kind="html")
                with pytest.raises(WhmcsTransientError):
                    await client.get_orders(client_id=1005)
                wh.clear_faults()

        asyncio.run(scenario())
        assert wh.duplicates() == {}
