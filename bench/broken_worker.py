"""The worker with its recovery guard deliberately broken — for ``make chaos``'s self-test only.

``Provisioner.lookup`` (the WHMCS lookup on the ``sfOrderId=`` marker that runs before an
``AddOrder`` may be repeated: after a crash with a pending intent, or a WHMCS timeout) is
replaced by one that never finds anything. ``python -m bench.chaos --break-guard`` runs this
instead of ``python -m streams worker`` to show that the chaos invariants catch a missing
guard (duplicate WHMCS orders). Never used by the product.
"""

from __future__ import annotations

import sys
from typing import Any

from streams import provision
from streams.__main__ import main


async def _never_found(self: Any, request: Any, **_kw: Any) -> None:
    return None


if __name__ == "__main__":
    provision.Provisioner.lookup = _never_found  # type: ignore[method-assign,assignment]
    sys.exit(main(sys.argv[1:] or ["worker"]))
