"""``python -m connectors run [--max-events N] [--timeout S]``: the source connector process.

Settings come from the environment / ``.env`` (``SF_*``, ``KAFKA_*``, ``CONNECTOR_*``,
``LOG_*``). SIGTERM/SIGINT: stop fetching, commit the open batch, exit 0.

Exit codes (:mod:`common.process`, the same for every process): 0 stopped (signal or bound
reached; also a signal while it waits for Kafka at start-up), 1 fatal error, 64 bad
configuration (also a broker that refuses the connector's credentials or ACLs, or a
``CONNECTOR_HTTP_PORT`` in use: one line names the setting); the connector's own: 2 stored replay id
refused with ``SF_EVENTS_INVALID_REPLAY=FAIL``, 3 fenced by another instance with the same
name (do not auto-restart on 3; a fence after the connector's own transaction timeout is not
this: it re-initialises and carries on, see ``connectors.source``).
"""

from __future__ import annotations

import argparse
import sys

from common.errors import KafkaAccessError, KafkaError
from common.kafka import UNSAFE, Stopped, ensure_topics
from common.metrics import HealthServer
from common.process import EXIT_CONFIG, EXIT_FATAL, EXIT_OK, Startup
from common.salesforce import SalesforceClient
from common.settings import ConnectorSettings, KafkaSettings, SalesforceSettings, WorkerSettings


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m connectors",
                                     description="Salesforce Pub/Sub API → Kafka source connector")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the connector until signalled (or a bound is hit)")
    run.add_argument("--max-events", type=int, default=None,
                     help="exit 0 after this many events are committed (tests)")
    run.add_argument("--timeout", type=float, default=None,
                     help="exit 0 after this many seconds (tests)")
    run.add_argument("--no-create-topics", action="store_true",
                     help="do not create missing topics at start-up")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    boot = Startup("connector")  # from here a SIGTERM is kept: a clean exit 0 once started
    args = parse_args(argv)
    kafka = boot.load(KafkaSettings.load)
    salesforce = boot.load(SalesforceSettings.load)
    connector = boot.load(ConnectorSettings.load)
    worker_group = kafka.topic(boot.load(WorkerSettings.load).app_id)  # whose progress counts
    log = boot.logging()
    if not connector.events_enabled:
        log.warning("SF_EVENTS_ENABLED=false: not subscribing; exiting")
        return EXIT_OK
    if not args.no_create_topics:
        try:
            report = ensure_topics(kafka, only=(kafka.requests, kafka.dead_letters,
                                                kafka.connector_offsets, kafka.replay_gaps))
        except KafkaAccessError as exc:
            log.error("%s", exc)
            return EXIT_CONFIG
        except KafkaError as exc:
            log.error("cannot prepare topics: %s", exc)
            return EXIT_FATAL
        except Stopped:  # a signal while the broker was waited for
            return boot.stopped()
        for line in report.drift:
            (log.error if UNSAFE in line else log.warning)("topic drift: %s", line)

    from connectors import metrics, observability
    from connectors.reconciler import Reconciler
    from connectors.source import Connector  # after logging is set up

    app = Connector(kafka=kafka, salesforce=salesforce, connector=connector)
    app.reconciler = Reconciler(kafka, connector, SalesforceClient(salesforce),
                                worker_group=worker_group,
                                written=lambda: app.written)
    boot.on_stop(app.request_stop)  # stop after the open batch
    metrics.prime(connector.invalid_replay)
    server = None
    if connector.http_port:  # in use: one line naming the setting, exit 64
        server = boot.load(lambda: HealthServer(
            connector.http_port, lambda: observability.ready(app),
            live=lambda: observability.live(app), host=connector.http_host,
            names=("CONNECTOR_HTTP_HOST", "CONNECTOR_HTTP_PORT"))).start()
    app.reconciler.start()
    try:
        return app.run(max_events=args.max_events, timeout_s=args.timeout)
    except Stopped:  # a signal while init_transactions or the position read waited
        return boot.stopped()
    finally:
        app.reconciler.stop()
        if server is not None:
            server.stop()


if __name__ == "__main__":
    sys.exit(main())
