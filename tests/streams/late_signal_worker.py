"""The real worker (``streams.__main__.main``, faust's worker and app) with a signal delivered
late in its start-up — for tests/streams/test_worker_late_signal.py. Never used by the product.

Only the start-up's broker checks are stubbed (``ensure_topics``, ``check_group_access``).
The signal named by ``LATE_SIGNAL`` (``SIGTERM`` or ``SIGINT``) is sent to this process
during ``gc.collect()``, after ``main``'s ``boot.stopping`` check and before faust (mode)
installs its own handlers. Prints ``APP STARTING`` if faust's app starts anyway (it then
takes in events: the signal was not honoured in time).
"""

from __future__ import annotations

import gc
import os
import signal
import sys
from typing import Any

import faust

import streams.__main__ as worker_main
from common.kafka import EnsureReport

SIGNAL = signal.Signals[os.environ.get("LATE_SIGNAL", "SIGTERM")]


class _LateSignalGc:
    """``gc`` as ``main`` sees it; its first ``collect()`` sends the signal first."""

    sent = False

    def __getattr__(self, name: str) -> Any:
        return getattr(gc, name)

    def collect(self, *args: Any) -> int:
        if not self.sent:
            self.sent = True
            print(f"LATE SIGNAL {SIGNAL.name}", flush=True)
            os.kill(os.getpid(), SIGNAL)
        return gc.collect(*args)


def _install() -> None:
    worker_main.ensure_topics = lambda *a, **k: EnsureReport()  # type: ignore
    worker_main.check_group_access = lambda *a, **k: None  # type: ignore
    worker_main.gc = _LateSignalGc()  # type: ignore[assignment]
    original = faust.App.on_start

    async def on_start(self: Any) -> None:
        print("APP STARTING", flush=True)
        await original(self)

    faust.App.on_start = on_start  # type: ignore[method-assign]


if __name__ == "__main__":
    _install()
    sys.exit(worker_main.main(sys.argv[1:] or ["worker"]))
