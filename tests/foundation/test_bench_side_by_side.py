"""make bench's side-by-side phase (bench/side_by_side.py) without a pipeline: its Orders/s
from the Salesforce clock, a clean run that does not finish, a restart that fails, and the
shape of the WHMCS sandbox's standalone pairs."""

from __future__ import annotations

import datetime as dt
import os
import re
from types import SimpleNamespace
from typing import Any

import pytest

import bench.harness as harness
import bench.side_by_side as sbs
from bench.harness import PhaseIncomplete, Pipeline
from tests.foundation.test_bench_harness import _Clock as _HarnessClock

EPOCH_MS = 1_796_300_000_000  # the fake Salesforce sandbox's clock at the fake clock's 0


class _Clock(_HarnessClock):
    """time for bench.harness and bench.side_by_side: a sleep moves the clock."""
    def time(self) -> float:
        return EPOCH_MS / 1000 + self.now

    def strftime(self, fmt: str, *args: Any) -> str:
        import time
        return time.strftime(fmt, *args)


def _sf_time(ms: float) -> str:
    """A Salesforce datetime (the sandbox's REST format)."""
    at = dt.datetime.fromtimestamp(ms / 1000, dt.UTC)
    return at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}+0000"


class _Salesforce:
    """Approves Orders at the clock's time; the pipeline writes ``share`` of each run's
    Orders back ``after`` seconds later (LastModifiedDate on the sandbox's clock)."""

    def __init__(self, clock: _Clock, after: float, share: float = 1.0,
                 status: str = "Provisioned") -> None:
        self.clock, self.after, self.share, self.status = clock, after, share, status
        self.approved: dict[str, tuple[float, bool]] = {}  # id → (approved at, written)

    def _ms(self) -> float:
        return EPOCH_MS + 1000 * self.clock.now

    def info(self) -> dict[str, Any]:
        return {"now_ms": int(self._ms())}

    def counters(self) -> dict[str, Any]:
        return {"api_used": 0, "calls": {}}

    def approve(self, n: int) -> list[str]:
        first = len(self.approved)
        ids = [f"801{first + i:015d}" for i in range(n)]
        for i, oid in enumerate(ids):
            self.approved[oid] = (self._ms(), i < int(n * self.share))
        return ids

    def query(self, soql: str) -> dict[str, Any]:
        ids = re.findall(r"'([^']+)'", soql)
        out = []
        for oid in ids:
            at, writes = self.approved[oid]
            written = writes and self._ms() >= at + 1000 * self.after
            out.append({"Id": oid,
                        "Activation_Status__c": self.status if written else "Activating",
                        "Activation_Error__c": None, "WHMCS_Order_Id__c": None,
                        "OpportunityId": None,
                        "LastModifiedDate": _sf_time(at + 1000 * self.after if written
                                                     else at)})
        return {"records": out}

    def requests(self) -> list[Any]:
        """The requests topic: one event per approval, CreatedDate = the approval."""
        return [SimpleNamespace(key=oid, value={"CreatedDate": dt.datetime.fromtimestamp(
            at / 1000, dt.UTC)}) for oid, (at, _) in self.approved.items()]


class _Whmcs:
    """One WHMCS order per Order the fake Salesforce has written back Provisioned
    (``extra``: one more for these)."""

    def __init__(self, sf: _Salesforce | None = None) -> None:
        self.add_orders = 0
        self.sf, self.extra = sf, set[str]()

    def clear_faults(self) -> None:
        pass

    def set_faults(self, *a: Any, **k: Any) -> None:
        pass

    def calls(self) -> dict[str, int]:
        return {"AddOrder": self.add_orders}

    def counters(self) -> dict[str, Any]:
        made = {oid: 1 + (oid in self.extra)
                for oid, (_at, writes) in (self.sf.approved.items() if self.sf else [])
                if writes and self.sf.status == "Provisioned"}
        return {"calls": {"AddOrder": 0}, "orders_by_marker": made,
                "duplicates": {k: v for k, v in made.items() if v > 1}}

    def active_orders_by_marker(self) -> dict[str, set[int]]:
        return {}

    def active_services_by_marker(self) -> dict[str, dict[int, set[int]]]:
        return {}

    def orders_for(self, oid: str) -> list[dict[str, Any]]:
        return []


def _pipeline(monkeypatch: pytest.MonkeyPatch, after: float, share: float = 1.0,
              status: str = "Provisioned") -> Pipeline:
    """A Pipeline whose Salesforce and WHMCS are the fakes above, the rest the harness's own
    (wait_settled, sf_orders, invariants), on a fake clock."""
    clock = _Clock()
    monkeypatch.setattr(harness, "time", clock)
    monkeypatch.setattr(sbs, "time", clock)
    p = object.__new__(Pipeline)
    p.sf = _Salesforce(clock, after, share, status)
    p.whmcs = _Whmcs(p.sf)
    p.seeded, p.kills = {}, []
    p.kafka = SimpleNamespace(requests="requests", outcomes="outcomes")
    p.records = lambda topic, schema=None: (  # type: ignore[method-assign]
        p.sf.requests() if topic == "requests" else [])
    return p


def test_orders_per_s_runs_from_the_approval_to_the_last_write_back(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """300 Orders written back 0.7 s after their approval: 428.6 Orders/s. Timed by the
    0.5-s poll that first saw them all it read 300 (1.0 s), and a real run's SOQL time put
    it at ~260: the column could only read ~540, ~270, ... whatever the pipeline did."""
    p = _pipeline(monkeypatch, after=0.7)
    run = sbs._run(p, 300, 0)
    assert run["orders_per_s"] == pytest.approx(300 / 0.7, rel=0.05)
    assert run["missing"] == 0


def test_the_bursts_seconds_run_from_the_approval_to_the_last_write_back(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """phase_burst (the burst and the sustained orders/s) waited with the same 0.5-s poll:
    its seconds come from the Salesforce clock too."""
    import bench.pipeline as bench_pipeline

    p = _pipeline(monkeypatch, after=0.7)
    monkeypatch.setattr(bench_pipeline, "time", harness.time)
    burst = bench_pipeline.phase_burst(p, 300)
    assert burst["seconds"] == pytest.approx(0.7, rel=0.01)


def test_a_clean_run_that_does_not_finish_fails_the_phase(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """70 % written back when the wait ends: the clean run's Orders/s and calls per Order
    would measure part of the work, and run_pipeline/run_baseline show the killed run's
    ``missing`` beside them — the phase fails instead."""
    p = _pipeline(monkeypatch, after=0.2, share=0.7)
    with pytest.raises(PhaseIncomplete, match=r"210 of 300"):
        sbs._run(p, 300, 0, settle_s=1)


def test_a_run_whose_orders_fail_fails_the_phase(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every Order written back Failed (a mapping regression, a refusal before AddOrder)
    settled the clean run and the burst: quick failures read as a faster pipeline making
    fewer WHMCS calls per Order. The benches seed no Order meant to fail."""
    import bench.pipeline as bench_pipeline

    p = _pipeline(monkeypatch, after=0.2, status="Failed")
    with pytest.raises(PhaseIncomplete, match=r"300 of 300 Orders Failed"):
        sbs._run(p, 300, 0)
    monkeypatch.setattr(bench_pipeline, "time", harness.time)
    with pytest.raises(PhaseIncomplete, match=r"burst: 300 of 300 Orders Failed"):
        bench_pipeline.phase_burst(p, 300)


def test_a_killed_run_whose_orders_fail_fails_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """Orders never written back are a killed run's figure (``missing``); Failed ones were
    counted as written back, quick, and raised its Orders/s."""
    p = _pipeline(monkeypatch, after=0.2, share=0.7, status="Failed")

    def kill() -> None:
        pass

    calls = iter([0] + [300] * 1000)  # the run's AddOrders: none at the start, then all
    p.whmcs.calls = lambda: {"AddOrder": next(calls)}  # type: ignore[method-assign]
    with pytest.raises(PhaseIncomplete, match=r"with a kill, 0 ms per WHMCS call: 210 of "
                                              r"210 Orders Failed"):
        sbs._run(p, 300, 0, kill, lambda: None, settle_s=1)


def test_a_burst_with_an_order_created_twice_in_whmcs_fails(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Its outcomes and write-backs alone do not show a second WHMCS order."""
    import bench.pipeline as bench_pipeline

    p = _pipeline(monkeypatch, after=0.7)
    monkeypatch.setattr(bench_pipeline, "time", harness.time)
    p.whmcs.extra = {f"801{5:015d}"}
    with pytest.raises(PhaseIncomplete, match=r"1 of 300 Orders without exactly one WHMCS "
                                              r"order, e.g. 801000000000000005: 2"):
        bench_pipeline.phase_burst(p, 300)


def test_a_killed_run_may_leave_orders_unwritten(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a kill, Orders never written back are the figure (``missing``), not a failure."""
    p = _pipeline(monkeypatch, after=0.2, share=0.7)
    p.whmcs.add_orders = 0

    def kill() -> None:
        pass

    calls = iter([0] + [300] * 1000)  # the run's AddOrders: none at the start, then all
    p.whmcs.calls = lambda: {"AddOrder": next(calls)}  # type: ignore[method-assign]
    run = sbs._run(p, 300, 0, kill, lambda: None, settle_s=1)
    assert run["missing"] == 90
    assert run["add_orders_at_kill"] == 300


def test_a_restart_that_fails_fails_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """The killed process is restarted in a thread: its failure (here _Baseline.start's
    assert) must reach the caller, not be printed by the thread and forgotten."""
    p = _pipeline(monkeypatch, after=0.2)
    calls = iter([0] + [300] * 1000)
    p.whmcs.calls = lambda: {"AddOrder": next(calls)}  # type: ignore[method-assign]

    def restart() -> None:
        raise AssertionError("the baseline never got its partitions")

    with pytest.raises(AssertionError, match="never got its partitions"):
        sbs._run(p, 300, 0, lambda: None, restart, settle_s=5)


# -- the WHMCS sandbox's standalone pairs -------------------------------------------------


def _expected_shapes() -> list[tuple[int, int, bool]]:
    """Per seed order shape: services (AddOrder pids), add-ons, config options or not."""
    from sandbox.seed import ORDER_SHAPES, catalog_item

    out = []
    for codes in ORDER_SHAPES:
        items = [catalog_item(c) for c in codes]
        out.append((sum(1 for i in items if i.item_class != "Add-on"),
                     sum(1 for i in items if i.item_class == "Add-on"),
                     any(i.config_options_json for i in items)))
    return out


def test_the_standalone_pairs_are_the_pipelines_orders(monkeypatch: pytest.MonkeyPatch) -> None:
    """whmcs_pairs_per_s drives the sandbox with the AddOrders the pipeline makes of the
    seed's order shapes (1.8 services, 0.6 add-ons a pair, config options), each with its
    own marker — not one product without add-ons (39 % less sandbox CPU per pair)."""
    from streams.mapping import map_order

    made: list[dict[str, Any]] = []

    class Client:
        def __init__(self, settings: Any) -> None:
            pass

        async def __aenter__(self) -> Client:
            return self

        async def __aexit__(self, *exc: object) -> None:
            pass

        async def add_order(self, params: dict[str, Any]) -> Any:
            made.append(params)
            return SimpleNamespace(order_id=len(made))

        async def accept_order(self, order_id: int) -> None:
            pass

    monkeypatch.setattr(sbs, "WhmcsClient", Client)
    monkeypatch.setattr(sbs, "WhmcsSettings", SimpleNamespace(load=lambda env: SimpleNamespace(
        payment_method="mailin", no_invoice=False, no_email=True)))
    p = SimpleNamespace(whmcs=SimpleNamespace(env=lambda: {},
                                              process=SimpleNamespace(pid=os.getpid())))
    shapes = _expected_shapes()
    pairs = 4 * len(shapes)
    result = sbs.whmcs_pairs_per_s(p, pairs=pairs, parallelism=1)  # type: ignore[arg-type]
    assert result["pairs"] == pairs and len(made) == pairs
    got = [(len(m["pid"]), sum(len(a.split(",")) for a in m.get("addons") or [] if a),
            bool(m.get("configoptions"))) for m in made]
    assert got == shapes * 4
    assert sum(s for s, _, _ in got) / pairs == pytest.approx(1.8)
    assert sum(a for _, a, _ in got) / pairs == pytest.approx(0.6)
    markers = [re.search(r"sfOrderId=(\w+)", m["notes"]) for m in made]
    assert all(markers) and len({m.group(1) for m in markers if m}) == pairs
    # item by item what the pipeline's own mapping makes of such an Order
    from sandbox.seed import ORDER_SHAPES

    for i, m in enumerate(made):
        want = map_order(_order(ORDER_SHAPES[i % len(ORDER_SHAPES)]), idem_key="k").params()
        assert {k: v for k, v in m.items() if k not in ("notes", "clientid")} == \
            {k: v for k, v in want.items() if k not in ("notes", "clientid")}


def _order(codes: tuple[str, ...]) -> dict[str, Any]:
    """The guard query's record of an Order of these seeded items."""
    from sandbox.seed import catalog_item

    items = [catalog_item(c) for c in codes]
    return {"Id": "801000000000001AAA", "Account": {"WH_Account__c": "1010"},
            "OrderItems": {"records": [
                {"Id": f"802{k}", "Quantity": 1, "Product2": {
                    "Name": i.name, "Item_Class__c": i.item_class,
                    "WHMCS_Product_Id__c": str(i.whmcs_id),
                    "Billing_Cycle__c": i.billing_cycle,
                    "Portal_ConfigOptions_JSON__c": i.config_options_json}}
                for k, i in enumerate(items)]}}
