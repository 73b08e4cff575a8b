"""One start-up for the connector, the worker and the sink: the same exit codes, the same
signal handling.

Exit codes, for every process (the supervisor, systemd and Kubernetes act on them):

* ``0`` — stopped: SIGTERM/SIGINT (also one that arrives while the process is still
  starting), or a bound given on the command line was reached;
* ``1`` — a fatal error: restart it;
* ``64`` (``EX_CONFIG``) — a missing or invalid setting, or a service refusing this
  installation's credentials (the broker, the org): one line names what to fix, and
  restarting cannot help — the supervisor does not;
* ``75`` (``EX_TEMPFAIL``) — the worker stalled: restart it.

The connector adds ``2`` (stored replay id refused under ``SF_EVENTS_INVALID_REPLAY=FAIL``)
and ``3`` (fenced by a newer instance); neither is restarted.

Signals: :class:`Startup` catches SIGTERM and SIGINT from the first instant, so a signal that
arrives while settings load, topics are checked or modules import is kept; once the process
has something to stop, :meth:`Startup.on_stop` installs its stop and honours a kept signal
at once (the worker's stop is faust's: :func:`streams.__main__.faust_worker`). A signal also
ends the main thread's waits for the brokers (topics, the group's access, the connector's
``init_transactions`` and stored position: :func:`common.kafka.stop_waits`) within one
attempt, with :class:`common.kafka.Stopped`, which each main turns into exit 0
(:meth:`Startup.stopped`): with the broker away, a start-up retried for 30–60 s and was
SIGKILLed after the supervisor's grace.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import faulthandler
import logging
import os
import signal
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from common import tracing
from common.errors import ConfigError
from common.kafka import stop_waits
from common.log import setup_logging
from common.metrics import GcMonitor
from common.settings import CommonSettings

EXIT_OK, EXIT_FATAL, EXIT_CONFIG, EXIT_STALLED = 0, 1, 64, 75
T = TypeVar("T")
M_ARENA_MAX = -8  # glibc's mallopt parameter (malloc.h)
MALLOC_ARENAS = 2


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """Cap glibc's malloc arenas, as ``MALLOC_ARENA_MAX`` would, unless that is set.

    glibc gives a thread that meets contention its own arena, up to 8 per core, and an
    arena's freed pages are seldom returned; librdkafka's, RocksDB's and the executor's
    threads each grew one. With 2, the worker's peak RSS draining a backlog of 50,000
    events (``bench.stages --backlog 50000``, runs one after the other) went from 204 to
    192 MB, at 318 orders/s against 333 (README, Performance). Returns True when the cap
    was set; False on another C library, or when the environment already says (glibc then
    reads it itself)."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False  # not glibc (musl, macOS): nothing to cap
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_ARENA_MAX, arenas))


class ConfigExit(SystemExit):
    """Leave with :data:`EXIT_CONFIG` after one line on stderr (no traceback)."""

    def __init__(self, message: str) -> None:
        print(f"configuration error: {message}", file=sys.stderr)
        super().__init__(EXIT_CONFIG)


class Startup:
    def __init__(self, process: str) -> None:
        self.process = process
        self.signalled: list[int] = []
        self._stop: Callable[[], None] | None = None
        limit_malloc_arenas()  # before the Kafka, RocksDB and executor threads start
        stop_waits(False)  # a stop asked of an earlier Startup in this process is not ours
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        self.common: CommonSettings = self.load(CommonSettings.load)

    def load(self, loader: Callable[[], T]) -> T:
        """A settings section (or what a setting names: the probes' port); a bad setting
        leaves with one line and :data:`EXIT_CONFIG`."""
        try:
            return loader()
        except ConfigError as exc:
            raise ConfigExit(str(exc)) from None

    def logging(self) -> logging.Logger:
        """Logging (JSON or text, secrets redacted), GC pause timing and tracing, as set."""
        common = self.common
        setup_logging(self.process, common.log_level, common.log_format)
        # a crash in native code (librdkafka, RocksDB) leaves every thread's Python stack on
        # stderr, in the process's log, instead of a bare exit -11
        faulthandler.enable()
        GcMonitor().install()
        tracing.setup(self.process, common.tracing, file=common.tracing_file,
                      otlp_endpoint=common.otlp_endpoint, state_dir=common.state_dir)
        return logging.getLogger(self.process)

    def on_stop(self, stop: Callable[[], None]) -> None:
        """From now on SIGTERM/SIGINT call ``stop``; one that came during start-up, now."""
        self._stop = stop
        if self.signalled:
            stop()

    @property
    def stopping(self) -> bool:
        return bool(self.signalled)

    def stopped(self) -> int:
        """:data:`EXIT_OK`, logged, for a wait for the brokers that a signal ended
        (:class:`common.kafka.Stopped`)."""
        logging.getLogger(self.process).info("stopped while waiting for Kafka: exit 0")
        return EXIT_OK

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self.signalled.append(signum)
        stop_waits()  # the main thread's waits for the brokers end within one attempt
        logging.getLogger(self.process).info(
            "signal %s: stopping", signal.Signals(signum).name)
        if self._stop is not None:
            self._stop()
