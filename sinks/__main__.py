"""``python -m sinks run [--max-records N] [--timeout S] [--exit-when-idle]``.

Exit codes: 0 after a clean stop (SIGTERM/SIGINT, a bound reached: pending writes flushed
and committed), 2 for a bad setting (including an org without the outcome fence's field,
found at start-up before anything is consumed) — also a broker that refuses the sink's
credentials or ACLs (one line names the setting or the refused operation; not restarted) —,
1 for anything else (offsets stay where Salesforce's
acknowledgements put them; a restart redelivers the rest).
"""

from __future__ import annotations

import argparse
import logging
import sys

from common import tracing
from common.errors import ConfigError, KafkaAccessError
from common.log import setup_logging
from common.metrics import GcMonitor, HealthServer
from common.settings import CommonSettings, KafkaSettings, SalesforceSettings, SinkSettings

log = logging.getLogger("sinks")


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
    args = parser.parse_args(argv)
    try:
        common = CommonSettings.load()
        setup_logging("sink", common.log_level, common.log_format)
        GcMonitor().install()
        tracing.setup("sink", common.tracing, file=common.tracing_file,
                      otlp_endpoint=common.otlp_endpoint, state_dir=common.state_dir)
        kafka = KafkaSettings.load()
        settings = SinkSettings.load()
        salesforce = SalesforceSettings.load()
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    from common.kafka import ensure_topics
    from common.salesforce import SalesforceClient
    from sinks.app import Sink

    try:  # outcomes and dead letters must exist; idempotent
        report = ensure_topics(kafka, only=(kafka.outcomes, kafka.dead_letters))
    except ConfigError as exc:  # e.g. the org lacks the outcome fence's field
        log.error("configuration error: %s", exc)
        return 2
    except KafkaAccessError as exc:
        log.error("%s", exc)
        return 2
    except Exception:
        log.exception("cannot reach Kafka at %s", kafka.bootstrap_servers)
        return 1
    for line in report.drift:
        log.warning("topic drift: %s", line)
    sink = Sink(kafka, settings, SalesforceClient(salesforce))
    sink.install_signal_handlers()
    server = HealthServer(settings.http_port, sink.ops.ready, live=sink.ops.live,
                          host=settings.http_host).start() if settings.http_port else None
    sink.ops.start()  # the group's lag gauge
    try:
        stats = sink.run(max_records=args.max_records, timeout=args.timeout,
                         exit_when_idle=args.exit_when_idle)
    except ConfigError as exc:  # e.g. the org lacks the outcome fence's field
        log.error("configuration error: %s", exc)
        return 2
    except KafkaAccessError as exc:
        log.error("%s", exc)
        return 2
    except Exception:
        log.exception("sink failed")
        return 1
    finally:
        if server is not None:
            server.stop()
    log.info("sink done: consumed=%d written=%d calls=%d dead_letters=%d", stats.consumed,
             stats.records_written, stats.calls, stats.dead_letters)
    return 0


if __name__ == "__main__":
    sys.exit(main())
