"""``python -m streams worker``: run the provisioning worker.

Reads every setting from the environment (and ``.env``); ``/metrics`` and ``/healthz`` on
``WORKER_HTTP_PORT`` (0 = off). SIGTERM/SIGINT stop the Faust worker: the batch in flight is
not acknowledged unless it finished (see :mod:`streams.app`).

Exit codes: 0 stopped, 64 bad configuration — a missing or invalid setting, or a broker
that refuses the worker's credentials or ACLs (one line names the setting; the supervisor
does not restart it), 75 stalled (restart it), anything else: restart.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys

from common import tracing
from common.errors import ConfigError, KafkaAccessError
from common.kafka import ensure_topics
from common.log import setup_logging
from common.metrics import GcMonitor, HealthServer
from common.salesforce import SalesforceClient
from common.settings import (
    CommonSettings,
    KafkaSettings,
    SalesforceSettings,
    WhmcsSettings,
    WorkerSettings,
)

log = logging.getLogger("streams")
EXIT_CONFIG = 64  # as the connector: a bad setting, do not restart


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m streams")
    parser.add_argument("command", choices=["worker"])
    parser.parse_args(argv)
    try:
        common = CommonSettings.load()
        kafka, worker = KafkaSettings.load(), WorkerSettings.load()
        whmcs, salesforce = WhmcsSettings.load(), SalesforceSettings.load()
    except ConfigError as exc:  # one line naming the variable, not a traceback
        print(f"configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    setup_logging("worker", common.log_level, common.log_format)
    GcMonitor().install()
    tracing.setup("worker", common.tracing, file=common.tracing_file,
                  otlp_endpoint=common.otlp_endpoint, state_dir=common.state_dir)
    if os.environ.get("WORKER_FAUST_LOG_LEVEL"):  # debugging rebalances/recovery
        for name in ("faust", "mode", "aiokafka"):
            logging.getLogger(name).setLevel(os.environ["WORKER_FAUST_LOG_LEVEL"].upper())
    from streams.faust_seam import UnsupportedVersion, check_versions
    try:
        check_versions()
    except UnsupportedVersion as exc:
        log.critical("%s", exc)
        return EXIT_CONFIG
    try:
        report = ensure_topics(kafka, only=(kafka.requests, kafka.outcomes, kafka.dead_letters))
    except KafkaAccessError as exc:
        log.error("%s", exc)
        return EXIT_CONFIG
    for line in report.drift:
        log.warning("topic drift: %s", line)

    import faust

    from streams.app import Worker

    built = Worker(kafka=kafka, worker=worker, whmcs=whmcs,
                   sf_client=SalesforceClient(salesforce), common=common)
    server = None
    if worker.http_port:
        server = HealthServer(worker.http_port, built.ops.ready, live=built.ops.live,
                              host=worker.http_host).start()
    built.ops.start(built.app.loop)  # loop heartbeat (/livez) and lag gauges
    if built.watchdog is not None:
        built.watchdog.start()
    runner = faust.Worker(built.app, loglevel=common.log_level, quiet=True,
                          redirect_stdouts=False, override_logging=False)
    # Everything built so far (modules, faust's app, clients) lives as long as the process:
    # move it out of the collector's way, so a generation-2 collection walks only what the
    # batches allocate (sfprov_gc_pause_seconds, see common.metrics.GcMonitor).
    gc.collect()
    gc.freeze()
    try:
        runner.execute_from_commandline()
    finally:
        if server is not None:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
