"""``python -m connectors run [--max-events N] [--timeout S]``: the source connector process.

Settings come from the environment / ``.env`` (``SF_*``, ``KAFKA_*``, ``CONNECTOR_*``,
``LOG_*``). SIGTERM/SIGINT: stop fetching, commit the open batch, exit 0.

Exit codes: 0 stopped (signal or bound reached), 1 fatal error, 2 stored replay id refused
with ``SF_EVENTS_INVALID_REPLAY=FAIL``, 3 fenced by another instance with the same name
(do not auto-restart on 3; a fence after the connector's own transaction timeout is not
this: it re-initialises and carries on, see ``connectors.source``), 64 bad configuration
(also a broker that refuses the connector's credentials or ACLs: one line names the setting).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from common import tracing
from common.errors import ConfigError, KafkaAccessError, KafkaError
from common.kafka import ensure_topics
from common.log import setup_logging
from common.metrics import GcMonitor, HealthServer
from common.salesforce import SalesforceClient
from common.settings import (
    CommonSettings,
    ConnectorSettings,
    KafkaSettings,
    SalesforceSettings,
    WorkerSettings,
)

EXIT_CONFIG = 64
log = logging.getLogger("connectors")


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
    # A SIGTERM during start-up (settings, topics, imports) is kept and honoured once the
    # connector exists: a clean exit 0, not death by signal half-way through starting.
    early: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, _frame: early.append(signum))
    signal.signal(signal.SIGINT, lambda signum, _frame: early.append(signum))
    args = parse_args(argv)
    try:
        common = CommonSettings.load()
        kafka = KafkaSettings.load()
        salesforce = SalesforceSettings.load()
        connector = ConnectorSettings.load()
        worker_group = kafka.topic(WorkerSettings.load().app_id)  # whose progress counts
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    setup_logging("connector", common.log_level, common.log_format)
    GcMonitor().install()
    tracing.setup("connector", common.tracing, file=common.tracing_file,
                  otlp_endpoint=common.otlp_endpoint, state_dir=common.state_dir)
    if not connector.events_enabled:
        log.warning("SF_EVENTS_ENABLED=false: not subscribing; exiting")
        return 0
    if not args.no_create_topics:
        try:
            report = ensure_topics(kafka, only=(kafka.requests, kafka.dead_letters,
                                                kafka.connector_offsets, kafka.replay_gaps))
        except KafkaAccessError as exc:
            log.error("%s", exc)
            return EXIT_CONFIG
        except KafkaError as exc:
            log.error("cannot prepare topics: %s", exc)
            return 1
        for line in report.drift:
            log.warning("topic drift: %s", line)

    from connectors import observability
    from connectors.reconciler import Reconciler
    from connectors.source import Connector  # after logging is set up

    app = Connector(kafka=kafka, salesforce=salesforce, connector=connector)
    app.reconciler = Reconciler(kafka, connector, SalesforceClient(salesforce),
                                worker_group=worker_group,
                                written=lambda: app.written)

    def on_signal(signum: int, _frame: object) -> None:
        log.info("signal %s: stopping after the open batch", signal.Signals(signum).name)
        app.request_stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if early:
        on_signal(early[0], None)
    server = HealthServer(connector.http_port, lambda: observability.ready(app),
                          live=lambda: observability.live(app),
                          host=connector.http_host).start() if connector.http_port else None
    app.reconciler.start()
    try:
        return app.run(max_events=args.max_events, timeout_s=args.timeout)
    finally:
        app.reconciler.stop()
        if server is not None:
            server.stop()


if __name__ == "__main__":
    sys.exit(main())
