"""The worker with one of its safeguards deliberately switched off — for ``make chaos``'s self-tests.

``python -m bench.broken_worker [--break guard|lease|repair] worker`` runs ``python -m streams worker``
with:

* ``guard`` (default; ``bench.chaos --break-guard``): ``Provisioner.lookup`` (the WHMCS lookup
  on the ``sfOrderId=`` marker that runs before an ``AddOrder`` may be repeated: after a
  crash with a pending intent, or a WHMCS timeout) replaced by one that never finds anything.
* ``lease`` (``bench.chaos --break-lease``): the ownership lease checked before every WHMCS
  write, ``streams.lease.OwnershipLease.check(partition, generation) -> LeaseCheck``, made to
  always answer ok — an ok check valid for an hour (``valid_until`` is also the send
  deadline the WHMCS request carries), never ``lost``. Each check the real lease would have
  refused is logged as ``lease off: would have fenced: ...`` (chaos counts them: proof that
  a pause hit a worker holding Orders). Without ``streams.lease`` (a worker from before the
  lease) nothing is patched: that worker has no lease to switch off, and says so in its log.

* ``repair`` (``bench.chaos --break-repair``): both sides of decision 0016 switched off. The
  owner's repair of another writer's late changelog records (``streams.repair.ChangelogRepair``)
  looks at nothing: each range it is told of is logged as ``repair off: would have looked
  at ...`` and dropped. The late writer forgets which of its records landed after another
  writer's (``DurableTable._suspect`` does nothing): its restores take them, in place. An
  owner that kept its partition takes what its restore in place reads (``_holds``: never).

The chaos invariants must then catch duplicate WHMCS orders (guard, lease) or changelogs that
end with a late writer's records (repair). Never used by the product.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
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


def break_lease() -> str:
    """Patch ``OwnershipLease.check`` to always say ok; returns what was done, for the log."""
    try:
        from streams import lease
    except ImportError:
        return "streams.lease not found: this worker has no ownership lease to switch off"
    real = lease.OwnershipLease.check

    def allow(owner: Any, verdict: Any, partition: int, generation: int) -> Any:
        if verdict.ok:
            return verdict
        log.warning("%s partition %s generation %s: %s", WOULD_HAVE_FENCED, partition,
                    generation, verdict.reason)
        if not dataclasses.is_dataclass(verdict):
            return lease.LeaseCheck(ok=True, reason=f"lease switched off ({verdict.reason})")
        fields = {f.name for f in dataclasses.fields(verdict)}
        clock = getattr(owner, "_clock", time.monotonic)
        wall = getattr(owner, "_wall", time.time)
        changes = {"ok": True, "valid_until": clock() + VALID_FOR_S,
                   "valid_until_wall": wall() + VALID_FOR_S, "lost": False}
        return dataclasses.replace(verdict, **{k: v for k, v in changes.items() if k in fields})

    if inspect.iscoroutinefunction(real):
        async def acheck(self: Any, partition: int, generation: int) -> Any:
            return allow(self, await real(self, partition, generation), partition, generation)
        lease.OwnershipLease.check = acheck
    else:
        def check(self: Any, partition: int, generation: int) -> Any:
            return allow(self, real(self, partition, generation), partition, generation)
        lease.OwnershipLease.check = check
    return "ownership lease switched off (OwnershipLease.check always ok)"


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
    return ("changelog repair switched off (ChangelogRepair looks at nothing; a restore "
            "takes this worker's own late records)")


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
