"""bench.broken_worker --break lease: it switches off the lease of the worker's WHMCS writes
(the event path's and the sweep's) and nothing else — the changelog repair (decision 0016)
still obeys the lease, so a lease-off chaos run breaks one protection, not two.

The break patches classes and modules for the whole process: each case runs in a
subprocess of its own."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# A worker that held partitions 0 and 1 in generation 5 and kept only partition 1 in
# generation 6 (partition 0 went to another worker): its lease for partition 0 is lost.
SCRIPT = r'''
import asyncio, json, logging, sys, time
from types import SimpleNamespace as NS

lines = []
class Keep(logging.Handler):
    def emit(self, record):
        lines.append(record.getMessage())
logging.getLogger().addHandler(Keep())
logging.getLogger().setLevel(logging.WARNING)

from streams import app, handler, repair
from streams.faust_seam import key_partition
from streams.lease import Fenced, OwnershipLease

broken = sys.argv[1] == "broken"
if broken:
    from bench.broken_worker import WOULD_HAVE_FENCED, break_lease
    said = break_lease()
else:
    WOULD_HAVE_FENCED, said = "lease off: would have fenced:", ""

lease = OwnershipLease(session_timeout_s=10, margin_s=2)
lease.assigned([0, 1], 5)
lease.heartbeat(5, time.monotonic(), accepted=True)
lease.rebalancing()
lease.assigned([1], 6)
lease.heartbeat(6, time.monotonic(), accepted=True)


class Topic:
    def get_topic_name(self):
        return "app-intents-changelog"


class Table:
    """Our last record in changelog partition 0 was written in generation 5; the new owner
    wrote offsets 11..19 after it. Our store of partition 0 is gone: nothing."""
    name = "intents"
    changelog_topic = Topic()

    def __init__(self):
        self.rewritten, self.looked = [], []

    def idle_tails(self):
        return {0: (10, 5)}

    def stored(self, key):
        return None

    def rewrite(self, key):
        self.rewritten.append(key)

    def looked_at(self, partition, offset, late=False):
        self.looked.append([partition, offset, late])


async def gate(call):
    try:
        check = await call()
    except Fenced as fenced:
        return {"fenced": fenced.stage}
    return {"ok": check.ok, "lost": check.lost, "left_s": check.valid_until - time.monotonic()}


async def main():
    out = {"said": said, "lease_check_ok": lease.check(0, 5).ok}
    table = Table()
    owner_records = {b"801000000000001AAA": b'{"state": "the new owner\'s"}'}

    async def commit():
        pass
    fixer = repair.ChangelogRepair(lease, read=lambda t, p, s, e: owner_records,
                                   commit=commit, wait_s=0.2)
    out["repair_found"] = await fixer.check_idle([table], lambda topic, p: 20)
    await fixer.idle()
    out["repair_rewrote"] = table.rewritten
    # the event path's gate before a WHMCS write, for an event of partition 0 taken in gen 5
    worker_handler = NS(lease=lease, _clock=lambda: int(time.time() * 1000),
                        intent_lease_ms=10_000)
    rec = NS(partition=0, generation=5, offset=7)
    out["handler"] = {stage: await gate(lambda s=stage: handler.EventHandler._own(
        worker_handler, rec, s)) for stage in ("intent", "AddOrder", "send")}
    # the sweep's, for an Order of partition 0 (its job begun in generation 6)
    oid = next(f"801{i:015d}" for i in range(1000) if key_partition(f"801{i:015d}", 2) == 0)
    worker = NS(lease=lease, kafka=NS(partitions=2))
    fence = app.Worker._sweep_fence(worker, oid)
    out["sweep"] = await gate(lambda: fence("AcceptOrder"))
    out["would_have_fenced"] = [line for line in lines if WOULD_HAVE_FENCED in line]
    print(json.dumps(out))

asyncio.run(main())
'''


def _run(mode: str) -> dict:
    done = subprocess.run([sys.executable, "-c", SCRIPT, mode], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_with_the_lease_on_a_lost_partition_is_fenced_and_not_repaired_from_a_stale_store(
) -> None:
    out = _run("intact")
    assert out["lease_check_ok"] is False
    assert out["repair_found"] == 0 and out["repair_rewrote"] == []
    assert out["handler"]["AddOrder"] == {"fenced": "AddOrder"}
    assert out["sweep"] == {"fenced": "AcceptOrder"}


def test_break_lease_lets_the_whmcs_writes_through_but_the_repair_still_obeys_the_lease(
) -> None:
    out = _run("broken")
    assert "switched off" in out["said"]
    # the lease itself still answers truly: the changelog repair still obeys it and
    # rewrites nothing of a partition that went to another worker (from a store it lost)
    assert out["repair_rewrote"] == [], out
    assert out["repair_found"] == 0, out
    assert out["lease_check_ok"] is False
    # what the break names is broken: the event path's gate and the sweep's let the
    # write through, valid long enough that a send deadline taken from it never bites
    for stage in ("intent", "AddOrder", "send"):
        got = out["handler"][stage]
        assert got["ok"] is True and got["lost"] is False and got["left_s"] > 3000, (stage, got)
    assert out["sweep"]["ok"] is True and out["sweep"]["left_s"] > 3000
    # each of them said what the real lease would have done, with the stage: the lines
    # bench.chaos counts as lease_would_fence — none of them from the repair
    fenced = out["would_have_fenced"]
    assert len(fenced) == 4, fenced
    assert [line.split(":")[2].split(",")[0].strip() for line in fenced] == [
        "before intent", "before AddOrder", "before send", "before AcceptOrder (sweep)"]
    assert all("partition 0" in line for line in fenced)
    assert not any("repair" in line for line in fenced)


def test_break_lease_without_a_lease_module_says_so() -> None:
    script = ("import sys, streams\n"
              "from bench.broken_worker import break_lease\n"
              "sys.modules['streams.lease'] = None  # a worker from before the lease\n"
              "streams.__dict__.pop('lease', None)\n"
              "print(break_lease())")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert "no ownership lease" in done.stdout, done.stderr
