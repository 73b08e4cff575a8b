"""The worker with one of its safeguards deliberately switched off — for ``make chaos``'s self-tests.

``python -m bench.broken_worker [--break guard|lease|repair] worker`` runs ``python -m streams worker``
with:

* ``guard`` (default; ``bench.chaos --break-guard``): ``Provisioner.lookup`` (the WHMCS lookup
  on the ``sfOrderId=`` marker that runs before an ``AddOrder`` may be repeated: after a
  crash with a pending intent, or a WHMCS timeout) replaced by one that never finds anything.
* ``lease`` (``bench.chaos --break-lease``): the ownership lease's gates of the worker's
  WHMCS writes switched off — the event path's (``hold`` as ``streams.handler`` calls it,
  before the pending intent, each ``AddOrder`` / ``AcceptOrder`` / ``CancelOrder``, the
  record and the send) and the sweep's (``Worker._sweep_fence``) answer ok, valid for an
  hour (``valid_until`` is also the send deadline the WHMCS request carries), never
  ``lost``. Each check the real lease would have refused is logged as ``lease off: would
  have fenced: before <stage>, ...`` (chaos counts them: proof that a pause hit a worker
  holding Orders). ``OwnershipLease.check`` itself still answers truly: the changelog
  repair (decision 0016, ``--break repair``'s) still obeys the lease, so a lease-off run
  breaks one protection, not two. Without ``streams.lease`` (a worker from before the
  lease) nothing is patched: that worker has no lease to switch off, and says so in its log.

* ``repair`` (``bench.chaos --break-repair``): both sides of decision 0016 switched off. The
  owner's repair of another writer's late changelog records (``streams.repair.ChangelogRepair``)
  looks at nothing: each range it is told of is logged as ``repair off: would have looked
  at ...`` and dropped. The late writer forgets which of its records landed after another
  writer's (``DurableTable._suspect`` does nothing): its restores take them, in place. An
  owner that kept its partition takes what its restore in place reads (``_holds``: never).
  No restore judges a record by its stamp (``_stamped_late``: never late).

The chaos invariants must then catch duplicate WHMCS orders (guard, lease) or changelogs that
end with a late writer's records (repair). Never used by the product.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import Any

from streams import provision
from streams.__main__ import main

log = logging.getLogger("bench.broken_worker")
WOULD_HAVE_FENCED = "lease off: would have fenced:"
VALID_FOR_S = 3600.0


async def _never_found(self: Any, request: Any, **_kw: Any) -> None:
    return None


def break_guard() -> str:
    provision.Provisioner.lookup = _never_found  # type: ignore[method-assign,assignment]
    return "WHMCS lookup switched off (Provisioner.lookup never finds an order)"


def _let_through(owner: Any, refused: Any, where: str) -> Any:
    """What a lease-off gate answers instead of ``refused``: ok, not lost, valid for an
    hour (``valid_until`` is also the send deadline the WHMCS request carries). Logged as
    the line ``bench.chaos`` counts (``lease_would_fence``)."""
    from streams.lease import LeaseCheck

    log.warning("%s %s: %s", WOULD_HAVE_FENCED, where, refused.reason)
    clock = getattr(owner, "_clock", time.monotonic)
    wall = getattr(owner, "_wall", time.time)
    return LeaseCheck(True, refused.reason, clock() + VALID_FOR_S, wall() + VALID_FOR_S)


def break_lease() -> str:
    """Switch off the lease's gates of the WHMCS writes — the event path's
    (``streams.handler``'s ``hold``) and the sweep's (``Worker._sweep_fence``) — and nothing
    else: ``OwnershipLease.check`` still answers truly, so the changelog repair
    (``streams.repair``, decision 0016) still obeys it. Returns what was done, for the log."""
    try:
        from streams import lease
    except ImportError:
        return "streams.lease not found: this worker has no ownership lease to switch off"
    from streams import app, handler

    async def hold(owner: Any, partition: int, generation: int, *, stage: str,
                   **_kw: Any) -> Any:
        check = owner.check(partition, generation)
        if check.ok:
            return check
        return _let_through(owner, check,
                            f"before {stage}, partition {partition} generation {generation}")

    real_sweep_fence = app.Worker._sweep_fence

    def sweep_fence(self: Any, order_id: str) -> Any:
        fence = real_sweep_fence(self, order_id)

        async def lenient(action: str) -> Any:
            try:
                return await fence(action)
            except lease.Fenced as fenced:
                partition = app.faust_seam.key_partition(order_id, self.kafka.partitions)
                return _let_through(self.lease, fenced.check, f"before {action} (sweep), "
                                    f"partition {partition} Order {order_id}")
        return lenient

    handler.hold = hold  # type: ignore[assignment]
    app.Worker._sweep_fence = sweep_fence  # type: ignore[method-assign]
    return ("ownership lease switched off for the WHMCS writes (the event path's and the "
            "sweep's gates always ok; the changelog repair still obeys the lease)")


WOULD_HAVE_REPAIRED = "repair off: would have looked at"


def break_repair() -> str:
    """Patch ``ChangelogRepair.foreign`` and ``check_idle`` to do nothing."""
    try:
        from streams import repair
    except ImportError:
        return "streams.repair not found: this worker has no changelog repair to switch off"

    def foreign(self: Any, table: Any, partition: int, start: int, end: int,
                generation: int | None) -> bool:
        log.warning("%s table %s partition %d offsets %d-%d", WOULD_HAVE_REPAIRED, table.name,
                    partition, start, end)
        return False  # the persisted offset held back, as before the repair

    async def check_idle(self: Any, tables: Any, high: Any) -> int:
        return 0
    repair.ChangelogRepair.foreign = foreign  # type: ignore[method-assign]
    repair.ChangelogRepair.check_idle = check_idle  # type: ignore[method-assign]
    from streams.faust_seam import DurableTable

    if not hasattr(DurableTable, "_suspect"):
        return "changelog repair switched off (ChangelogRepair looks at nothing)"

    def suspect(self: Any, partition: int, offsets: list[int], generation: int) -> None:
        log.warning("%s table %s partition %d: %d record(s) of ours among another writer's "
                    "(late writer's side)", WOULD_HAVE_REPAIRED, self.name, partition,
                    len(offsets))
    DurableTable._suspect = suspect  # type: ignore[method-assign]
    if hasattr(DurableTable, "_holds"):  # the owner's restore in place takes every record
        DurableTable._holds = lambda self, partition: False  # type: ignore[method-assign]
    if hasattr(DurableTable, "_stamped_late"):  # any restore takes stamped late records
        DurableTable._stamped_late = lambda self, msg: None  # type: ignore[method-assign]
    return ("changelog repair switched off (ChangelogRepair looks at nothing; a restore "
            "takes late records, this worker's own and any writer's stamped ones)")


BREAKS = {"guard": break_guard, "lease": break_lease, "repair": break_repair}


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.broken_worker")
    parser.add_argument("--break", dest="broken", choices=sorted(BREAKS), default="guard")
    args, rest = parser.parse_known_args(argv)
    what = BREAKS[args.broken]()
    print(f"bench.broken_worker: {what}", file=sys.stderr, flush=True)
    return main(rest or ["worker"])


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
