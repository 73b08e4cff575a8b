"""Freeze the broker while a worker starts: does the worker ever get back to work?

Found by ``make chaos --pauses`` (a SIGSTOP of the broker seconds after a worker restart):
the restarted worker never processed another event, for 15 minutes, while reporting healthy.
This repeats it on purpose: for each ``--delay`` D, SIGKILL the worker, start it, wait
until its probe server answers (``/readyz`` 503 ``starting``: since the readiness waits
for the first rebalance, ``/healthz`` 200 would come after the join this hits), wait D seconds more, SIGSTOP the broker for ``--pause-s``,
SIGCONT, approve 5 Orders and wait for them to settle. Seen on this machine at D = 0.6 s
in about one try of two, with and without the idempotent producer: after the broker comes
back, faust's assignor, running on the worker, finds none of the subscribed topics in its
(empty) metadata — ``Ignoring missing topic: '<prefix>salesforce.order-provision-requested'``
— assigns nothing (``requests partitions assigned: []``), and nothing triggers another
rebalance. (Once, in a chaos run, the worker instead never got any assignment at all after
the freeze.) Since then the stall watchdog also looks for records on partitions *no member
of the group* owns, and exits 75 to be restarted (here after ``WORKER_STALL_TIMEOUT_S`` =
20 s; this script restarts it as ``make up``'s supervisor would).

    python -m bench.freeze_at_start --delay 0.6 --delay 0.6 --delay 1.0 [--keep DIR]

Exit status 1 when an attempt's Orders did not settle (the worker's log is in DIR/logs).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path

from bench.harness import Pipeline

ENV = {"WORKER_SESSION_TIMEOUT_S": "10", "SINK_SESSION_TIMEOUT_MS": "10000",
       "WORKER_STALL_TIMEOUT_S": "20"}


def attempt(p: Pipeline, delay: float, pause_s: float) -> int:
    """One frozen start-up; returns how many of 5 Orders approved afterwards settled."""
    p.kill("worker")
    p.start("worker")
    # its probe server answering (503 "starting" until its first rebalance is over): the
    # instant its start-up meets the broker — /healthz 200 comes only after the first join,
    # with the partitions held and the metadata loaded, too late to freeze that join
    p.wait_listening("worker")
    time.sleep(delay)
    p.pause("kafka", pause_s)
    while p.paused():
        time.sleep(0.2)
    ids = p.sf.approve(5)
    deadline = time.monotonic() + 120
    rows: dict = {}
    while time.monotonic() < deadline:
        rows = p.wait_settled(ids, timeout=5, poll=1)
        if sum(r.get("Activation_Status__c") in ("Provisioned", "Failed")
               for r in rows.values()) == len(ids):
            break
        proc = p.procs["worker"]
        if proc.poll() is not None:  # as make up's supervisor: a stalled worker exits 75
            print(f"  the worker exited {proc.returncode}; restarting it", flush=True)
            p.start("worker")
    return sum(r.get("Activation_Status__c") in ("Provisioned", "Failed") for r in rows.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.freeze_at_start",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--delay", type=float, action="append",
                        help="seconds after the worker's /healthz answers (repeatable)")
    parser.add_argument("--pause-s", type=float, default=30.0)
    parser.add_argument("--keep", type=Path, default=None)
    args = parser.parse_args(argv)
    with contextlib.ExitStack() as stack:
        home = args.keep or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        with Pipeline(home, accounts=50, orders=200, broken_every=0, env=ENV) as p:
            p.wait_settled(p.sf.approve(5), timeout=120)
            for delay in args.delay or [0.6, 0.6, 1.0]:
                settled = attempt(p, delay, args.pause_s)
                print(f"delay {delay}: {settled}/5 settled", flush=True)
                if settled < 5:
                    print(f"the worker did not resume work; its log: {p.log('worker')}")
                    return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
