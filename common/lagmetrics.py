"""Consumer lag as a Prometheus gauge, per group, topic and partition.

The figures are :func:`common.lag.group_lag`'s — records really left to read, transaction
markers excluded, as ``sfprov lag`` prints them — read by the process that consumes: the
worker publishes its group's lag on the requests topic, the sink its group's on the outcomes
topic. Several instances of one group publish the same series (aggregate with ``max by
(group, topic, partition)``).

One reader, two users: the worker's stall watchdog reads lag through :meth:`LagPublisher.read`
(which publishes what it read), and the publisher's own thread reads only when nobody did
for ``interval_s``. Reads are serialized: the reader's clients are not shared across threads.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from prometheus_client import Counter, Gauge

log = logging.getLogger(__name__)
Rows = list[tuple[int, int, int]]  # (partition, committed, end)

CONSUMER_LAG = Gauge("sfprov_consumer_lag_records",
                     "Records beyond the group's committed offset (transaction markers "
                     "excluded), by consumer group, topic and partition.",
                     ["group", "topic", "partition"])
LAG_READS = Counter("sfprov_consumer_lag_reads_total",
                    "Reads of the consumer group's lag from the broker, by result.",
                    ["group", "result"])
# the lag gauge keeps its last value while reads fail: a process cut from the brokers while
# idle showed lag 0 for ever, and no stall rule could fire (SfprovLagUnreadable reads this)
LAG_READ_AT = Gauge("sfprov_consumer_lag_read_timestamp_seconds",
                    "Unix time of the last successful read of the consumer group's lag "
                    "(the process's start until its first).", ["group"])


class LagPublisher:
    def __init__(self, reader: Callable[[], Rows], *, group: str, topic: str,
                 interval_s: float = 15.0) -> None:
        self._reader = reader
        self.group, self.topic, self.interval_s = group, topic, interval_s
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lag-gauges", daemon=True)
        self.last_read_at: float | None = None  # monotonic, of the last successful read
        self.last_error: str | None = None
        self.error_since: float | None = None  # wall clock: reads failing since
        LAG_READ_AT.labels(group).set_to_current_time()  # counts from the start
        for result in ("ok", "error"):
            LAG_READS.labels(group, result)  # exported at zero from the start

    def read(self) -> Rows:
        """Read the lag (raising what the reader raises) and publish it."""
        with self._lock:
            try:
                rows = self._reader()
            except Exception as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                self.error_since = self.error_since or time.time()
                LAG_READS.labels(self.group, "error").inc()
                raise
            self.last_read_at, self.last_error, self.error_since = time.monotonic(), None, None
            LAG_READS.labels(self.group, "ok").inc()
            LAG_READ_AT.labels(self.group).set_to_current_time()
            for partition, committed, end in rows:
                CONSUMER_LAG.labels(self.group, self.topic, str(partition)).set(
                    max(0, end - committed))
            return rows

    def start(self) -> LagPublisher:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(min(self.interval_s, 1.0)):
            last = self.last_read_at
            if last is not None and time.monotonic() - last < self.interval_s \
                    and self.last_error is None:
                continue
            try:
                self.read()
            except Exception as exc:  # noqa: BLE001 - a broker hiccup must not end the gauges
                log.warning("cannot read the consumer group's lag", extra={"cause": repr(exc)})
                self._stop.wait(self.interval_s)
