"""``python -m streams worker``: run the provisioning worker.

Reads every setting from the environment (and ``.env``); ``/metrics``, ``/livez``,
``/readyz`` on ``WORKER_HTTP_PORT`` (0 = off). SIGTERM/SIGINT stop the worker: events in
flight may finish for ``WORKER_DRAIN_TIMEOUT_S``, then the finished ones are committed; the
rest is redelivered (see :mod:`streams.app`). One that arrives while it is still starting
stops it before it takes anything in (exit 0; :func:`faust_worker`).

Exit codes (:mod:`common.process`, the same for every process): 0 stopped (also by a signal
while it waits for Kafka at start-up), 64 bad configuration — a missing or invalid setting
(``WORKER_HTTP_PORT`` in use among them), another faust-streaming/aiokafka version than
the verified one, a requests topic whose partition count is not ``KAFKA_PARTITIONS`` (or
changelogs partitioned otherwise than it), or a broker that refuses the worker's credentials
or ACLs (one line names it; the supervisor does not restart it), 75 stalled (restart it),
anything else: restart.
ACLs are checked at start-up for the topics (``ensure_topics``) and the group
(``check_group_access``); a write refused later — outcomes, dead letters, changelogs — stops
the worker as SIGTERM would, then exits 64 (:meth:`streams.app.Worker.refuse`), and so does
a read of the requests topic or the group refused later (:meth:`streams.app.Worker.crashed`).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import sys
from typing import TYPE_CHECKING

from common.errors import KafkaAccessError, KafkaError
from common.group_describe import check_group_access
from common.kafka import (
    CHANGELOG_DELETE_RETENTION_MS,
    REQUESTS_SEGMENT_MS,
    UNSAFE,
    PartitionMismatch,
    Stopped,
    changelog_topics,
    dedupe_outlived,
    ensure_topics,
    session_outside_defaults,
)
from common.metrics import HealthServer
from common.process import EXIT_CONFIG, EXIT_FATAL, EXIT_OK, Startup
from common.salesforce import SalesforceClient
from common.settings import KafkaSettings, SalesforceSettings, WhmcsSettings, WorkerSettings

if TYPE_CHECKING:
    import faust

GC_GEN0_THRESHOLD = 20_000  # Python's default is 700 (see main)


def use_event_loop(name: str) -> None:
    """Make every event loop of this process ``name``'s: ``UVLOOP`` (libuv, written in C:
    its callbacks, timers, polling and socket transports cost less CPU than asyncio's
    pure-Python loop; docs/decisions/0010) or ``ASYNCIO``, Python's own."""
    if name.upper() == "UVLOOP":
        import uvloop
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    else:
        asyncio.set_event_loop_policy(asyncio.DefaultEventLoopPolicy())


def faust_worker(boot: Startup) -> type[faust.Worker]:
    """faust's worker, which honours a SIGTERM/SIGINT that ``boot`` kept while starting.

    mode installs faust's handlers for SIGTERM and SIGINT in the worker's first start
    (``on_first_start``); until then :class:`common.process.Startup` keeps a signal — also
    one that arrives after :func:`main` last looked (while the health server starts,
    ``faust.Worker(...)`` is made, ``gc.collect()`` runs). Once mode's handlers are in, such
    a signal stops the worker (mode's ``stop``, as its handlers do) before its app starts:
    nothing joined the group or was taken in, and the exit is 0. A signal after that is
    mode's own; SIGUSR1's stack dump leaves local variables out (the seam's
    :class:`~streams.faust_seam.StackDumpWorker`)."""
    from streams.faust_seam import StackDumpWorker

    class Worker(StackDumpWorker):  # its name in the logs: "[^Worker]", as faust's
        async def on_first_start(self) -> None:
            await super().on_first_start()  # mode's signal handlers are in from here
            if boot.stopping:  # the worker's start checks should_stop next: the app never starts
                logging.getLogger(boot.process).info(
                    "signal %s while starting: stopping before the app starts",
                    signal.Signals(boot.signalled[0]).name)
                await self.stop()

    return Worker


def main(argv: list[str] | None = None) -> int:
    boot = Startup("worker")  # from here a SIGTERM is kept: a clean exit 0 while starting
    parser = argparse.ArgumentParser(prog="python -m streams")
    parser.add_argument("command", choices=["worker"])
    parser.parse_args(argv)
    kafka, worker = boot.load(KafkaSettings.load), boot.load(WorkerSettings.load)
    whmcs, salesforce = boot.load(WhmcsSettings.load), boot.load(SalesforceSettings.load)
    log = boot.logging()
    outside = session_outside_defaults(worker.session_timeout_s * 1000, "WORKER_SESSION_TIMEOUT_S")
    if outside:  # the brokers' bounds may differ: said, not refused
        log.warning("%s", outside)
    if worker.faust_log_level:  # debugging rebalances/recovery (unset: LOG_LEVEL)
        for name in ("faust", "mode", "aiokafka"):
            logging.getLogger(name).setLevel(worker.faust_log_level)
    # before anything imports streams.faust_seam: it imports the libraries' private names,
    # and another release that renamed one would fail that import first (exit 1, restarted)
    from streams.faust_pins import UnsupportedVersion, check_versions
    try:
        check_versions()
    except UnsupportedVersion as exc:
        log.critical("%s", exc)
        return EXIT_CONFIG
    try:
        # its tables' changelogs too, before it joins (common.kafka.changelog_topics); a
        # requests topic with another partition count than KAFKA_PARTITIONS (or changelogs
        # with another than the requests topic) refuses before anything is created: the
        # worker partitions its tables and finds each Order's partition with the setting
        report = ensure_topics(kafka, only=(kafka.requests, kafka.outcomes, kafka.dead_letters),
                               extra=changelog_topics(kafka, kafka.topic(worker.app_id)),
                               refuse_partition_mismatch=True)
        # described in a child process: librdkafka#4605 aborts the asker (decision 0008)
        check_group_access(kafka, kafka.topic(worker.app_id))
    except (KafkaAccessError, PartitionMismatch) as exc:
        log.error("%s", exc)
        return EXIT_CONFIG
    except KafkaError as exc:  # the broker did not answer for the running time allowed
        log.error("cannot prepare topics: %s", exc)
        return EXIT_FATAL
    except Stopped:  # a signal while the broker was waited for
        return boot.stopped()
    for line in report.drift:
        (log.error if UNSAFE in line else log.warning)("topic drift: %s", line)
    # the topic's own retention: made by an admin, or kept since another setting, it may
    # keep events longer than KAFKA_REQUESTS_RETENTION_MS says (a drift, not unsafe)
    retention = report.retention_ms(kafka.requests, kafka.requests_retention_ms)
    outlived = dedupe_outlived(
        retention, worker.dedupe_ttl_days,
        # a topic made before daily segments rolls weekly: its events live a week longer
        segment_ms=report.number(kafka.requests, "segment.ms", REQUESTS_SEGMENT_MS),
        source="KAFKA_REQUESTS_RETENTION_MS" if retention == kafka.requests_retention_ms
        else f"the requests topic's retention.ms, not KAFKA_REQUESTS_RETENTION_MS="
             f"{kafka.requests_retention_ms}")
    if outlived:
        log.warning("%s", outlived)

    use_event_loop(worker.event_loop)  # before faust makes its loop
    from streams import metrics
    from streams.app import Worker

    built = Worker(kafka=kafka, worker=worker, whmcs=whmcs,
                   sf_client=SalesforceClient(salesforce), common=boot.common)
    if boot.stopping:
        return EXIT_OK  # signalled while starting: nothing taken in yet
    metrics.prime(built.app.tables)  # its tables' names
    for table in (built.idem, built.intents):
        # a changelog keeping tombstones less than declared (an unsafe drift, logged above):
        # its stores go stale sooner, or a deletion missed meanwhile would be kept for ever
        kept_ms = report.number(table.changelog_topic.get_topic_name(), "delete.retention.ms",
                                CHANGELOG_DELETE_RETENTION_MS)
        table.stale_after_s = min(kept_ms, CHANGELOG_DELETE_RETENTION_MS) / 1000 / 2
    server = None
    if worker.http_port:  # in use: one line naming the setting, exit 64
        server = boot.load(lambda: HealthServer(
            worker.http_port, built.ops.ready, live=built.ops.live, host=worker.http_host,
            names=("WORKER_HTTP_HOST", "WORKER_HTTP_PORT"))).start()
    built.ops.start(built.app.loop)  # loop heartbeat (/livez) and lag gauges
    if built.watchdog is not None:
        built.watchdog.start()
    # faust's worker (mode) takes SIGTERM/SIGINT over when it starts: it stops the app, which
    # lets the events in flight finish (WORKER_DRAIN_TIMEOUT_S) and commits (streams.app); a
    # signal kept since the check of boot.stopping above stops it before the app starts
    # (faust_worker)
    runner = faust_worker(boot)(built.app, loglevel=boot.common.log_level, quiet=True,
                                redirect_stdouts=False, override_logging=False)
    # a write the broker refuses (streams.app.Worker.refuse): the operator's stop — events in
    # flight may finish, the finished ones are committed — then EXIT_CONFIG below
    built.stop = lambda: os.kill(os.getpid(), signal.SIGTERM)
    # Everything built so far (modules, faust's app, clients) lives as long as the process:
    # move it out of the collector's way, so a generation-2 collection walks only what the
    # events allocate (sfprov_gc_pause_seconds, see common.metrics.GcMonitor).
    gc.collect()
    gc.freeze()
    # A young generation of 20,000 objects, not 700: most of an event's objects are freed
    # by their reference counts before a collection would look at them, so far fewer are
    # promoted and walked again. bench.stages --backlog 15000: collections took 2.2 s of
    # the worker's ~33 s of CPU, 0.3 s with this; peak RSS unchanged.
    gc.set_threshold(GC_GEN0_THRESHOLD, 10, 10)
    try:
        runner.execute_from_commandline()
    except SystemExit:  # mode's exit code: 0 stopped, 1 crashed
        if built.refused is None:
            built.crashed(runner.crash_reason)  # a read refused: one line, then exit 64
        if built.refused is not None:
            return EXIT_CONFIG  # the line was logged (streams.app.Worker.refuse)
        raise
    finally:
        if server is not None:
            server.stop()
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
