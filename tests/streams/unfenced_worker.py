"""The worker with its ownership lease switched off — for the pause tests only.

Every lease check answers "owned": a worker paused past its session timeout goes on with its
old work when it resumes. ``tests/streams/test_worker_pause.py`` runs it to show that the
pause test can see the bug the lease prevents (duplicate WHMCS orders). Never used by the
product.
"""

from __future__ import annotations

import sys
from typing import Any

from streams import lease
from streams.__main__ import main


def _always(self: Any, partition: int, generation: int) -> lease.LeaseCheck:
    return lease.LeaseCheck(True, "", self._clock() + 3600, self._wall() + 3600)


if __name__ == "__main__":
    lease.OwnershipLease.check = _always  # type: ignore[method-assign]
    sys.exit(main(sys.argv[1:] or ["worker"]))
