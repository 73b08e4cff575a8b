"""``python -m sinks run [--max-records N] [--timeout S] [--exit-when-idle]``.

Exit codes (:mod:`common.process`, the same for every process): 0 after a clean stop
(SIGTERM/SIGINT, a bound reached: pending writes flushed and committed), 64 for a bad
setting (including an org without the outcome fence's field, found at start-up before
anything is consumed, a group with no committed offset on outcomes that hold history and no
``SINK_START_POSITION``, and a ``SINK_HTTP_PORT`` in use) — also a broker that refuses the
sink's credentials or ACLs (one line names the setting or the refused operation; not
restarted) —, 1 for anything else (offsets
stay where Salesforce's acknowledgements put them; a restart redelivers the rest; among them
the brokers not answering for 60 s of running time while an assignment asks the group's
committed offsets, :mod:`sinks.start`). A signal while it waits for Kafka at start-up, or
while an assignment waits for those offsets, exits 0 too.
"""

from __future__ import annotations

import argparse
import sys

from common.errors import ConfigError, KafkaAccessError
from common.metrics import HealthServer
from common.process import EXIT_CONFIG, EXIT_FATAL, EXIT_OK, Startup
from common.settings import KafkaSettings, SalesforceSettings, SinkSettings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sinks",
                                     description="Salesforce write-back sink.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="consume outcomes and write them back to Salesforce")
    run.add_argument("--max-records", type=int, default=None,
                     help="stop after consuming this many outcome records")
    run.add_argument("--timeout", type=float, default=None, help="stop after S seconds")
    run.add_argument("--exit-when-idle", action="store_true",
                     help="stop once every assigned partition is consumed, written and committed")
    boot = Startup("sink")
    args = parser.parse_args(argv)
    kafka = boot.load(KafkaSettings.load)
    settings = boot.load(SinkSettings.load)
    salesforce = boot.load(SalesforceSettings.load)
    log = boot.logging()
    from common.kafka import UNSAFE, Stopped, ensure_topics
    from common.salesforce import SalesforceClient
    from sinks import metrics
    from sinks.app import Sink

    try:  # outcomes and dead letters must exist; idempotent
        report = ensure_topics(kafka, only=(kafka.outcomes, kafka.dead_letters))
    except KafkaAccessError as exc:
        log.error("%s", exc)
        return EXIT_CONFIG
    except Exception:
        log.exception("cannot prepare topics")
        return EXIT_FATAL
    except Stopped:  # a signal while the broker was waited for
        return boot.stopped()
    for line in report.drift:
        (log.error if UNSAFE in line else log.warning)("topic drift: %s", line)
    sink = Sink(kafka, settings, SalesforceClient(salesforce))
    boot.on_stop(sink.stop)
    metrics.prime()
    server = None
    if settings.http_port:  # in use: one line naming the setting, exit 64
        server = boot.load(lambda: HealthServer(
            settings.http_port, sink.ops.ready, live=sink.ops.live, host=settings.http_host,
            names=("SINK_HTTP_HOST", "SINK_HTTP_PORT"))).start()
    sink.ops.start()  # the group's lag gauge
    try:
        stats = sink.run(max_records=args.max_records, timeout=args.timeout,
                         exit_when_idle=args.exit_when_idle)
    except ConfigError as exc:  # e.g. the org lacks the outcome fence's field
        log.error("configuration error: %s", exc)
        return EXIT_CONFIG
    except KafkaAccessError as exc:
        log.error("%s", exc)
        return EXIT_CONFIG
    except Stopped:  # a signal while an assignment waited for the group's offsets
        return boot.stopped()
    except Exception:
        log.exception("sink failed")
        return EXIT_FATAL
    finally:
        if server is not None:
            server.stop()
    log.info("sink done: consumed=%d written=%d calls=%d dead_letters=%d", stats.consumed,
             stats.records_written, stats.calls, stats.dead_letters)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
