"""WhmcsClient.iter_orders pages through a list WHMCS keeps newest first: orders deleted
ahead of the read between two pages shift the rest up, and the row at the page boundary
would never be read — find_orders_by_marker missed the Order's own order, and a second
AddOrder followed (/tmp/review-lease/paging.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from common.whmcs import WhmcsClient, WhmcsOrder

MARKER = "801000000000001AAA"


def listing(count: int, marker_at: int) -> list[WhmcsOrder]:
    orders = [WhmcsOrder(id=i, client_id=7, status="Active", notes="", invoice_id=None,
                         service_ids=[]) for i in range(count, 0, -1)]  # newest first
    orders[marker_at] = WhmcsOrder(id=orders[marker_at].id, client_id=7, status="Pending",
                                   notes=f"sfOrderId={MARKER}", invoice_id=None,
                                   service_ids=[])
    return orders


def client_over(orders: list[WhmcsOrder], between: dict[int, Callable[[], object]]) -> WhmcsClient:
    """A client whose GetOrders pages ``orders``; ``between[n]`` runs before the n-th read."""
    client = object.__new__(WhmcsClient)
    calls = [0]

    async def get_orders(*, client_id=None, limitstart=0, limitnum=25, **_kw):
        calls[0] += 1
        if calls[0] in between:
            between[calls[0]]()
        return len(orders), orders[limitstart:limitstart + limitnum]
    client.get_orders = get_orders  # type: ignore[method-assign]
    return client


@pytest.mark.parametrize("deleted", [[3], [3, 50], [0, 1, 2, 3]])
def test_orders_deleted_ahead_between_pages_do_not_hide_the_boundary_row(deleted):
    orders = listing(250, marker_at=100)
    client = client_over(orders, {2: lambda: [orders.pop(i) for i in sorted(deleted,
                                                                                 reverse=True)]})
    found = asyncio.run(client.find_orders_by_marker(7, MARKER))
    assert [o.id for o in found] == [150]  # found, exactly once


def test_orders_created_and_deleted_between_pages_each_order_once():
    orders = listing(250, marker_at=199)
    newer = [WhmcsOrder(id=1000 + i, client_id=7, status="Active", notes="", invoice_id=None,
                        service_ids=[]) for i in range(3)]

    def churn():  # three created, five deleted ahead of the read
        del orders[10:15]
        orders[:0] = newer
    client = client_over(orders, {2: churn, 3: lambda: orders.pop(0)})
    every = asyncio.run(client.iter_orders(7))
    ids = [o.id for o in every]
    assert len(ids) == len(set(ids))
    assert set(ids) >= {o.id for o in orders if o.id < 1000}
    found = asyncio.run(client.find_orders_by_marker(7, MARKER))
    assert [o.id for o in found] == [51]
