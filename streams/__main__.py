"""``python -m streams worker``: run the provisioning worker.

Reads every setting from the environment (and ``.env``); ``/metrics`` and ``/healthz`` on
``WORKER_HTTP_PORT`` (0 = off). SIGTERM/SIGINT stop the Faust worker: the batch in flight is
not acknowledged unless it finished (see :mod:`streams.app`).
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m streams")
    parser.add_argument("command", choices=["worker"])
    parser.parse_args(argv)
    common = CommonSettings.load()
    setup_logging("worker", common.log_level, common.log_format)
    GcMonitor().install()
    if os.environ.get("WORKER_FAUST_LOG_LEVEL"):  # debugging rebalances/recovery
        for name in ("faust", "mode", "aiokafka"):
            logging.getLogger(name).setLevel(os.environ["WORKER_FAUST_LOG_LEVEL"].upper())
    from streams.faust_seam import UnsupportedVersion, check_versions
    try:
        check_versions()
    except UnsupportedVersion as exc:
        log.critical("%s", exc)
        return 64
    kafka, worker = KafkaSettings.load(), WorkerSettings.load()
    whmcs, salesforce = WhmcsSettings.load(), SalesforceSettings.load()
    ensure_topics(kafka)

    import faust

    from streams.app import Worker

    built = Worker(kafka=kafka, worker=worker, whmcs=whmcs,
                   sf_client=SalesforceClient(salesforce), common=common)
    server = None
    if worker.http_port:
        server = HealthServer(worker.http_port, built.check).start()
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
