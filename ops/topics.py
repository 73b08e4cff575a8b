"""``python -m ops.topics [--drift-ok]``: create the project's missing topics, report drift.

The worker's table changelogs (``<WORKER_APP_ID>-<table>-changelog``) are among them: made
here as the worker makes them at its start (``common.kafka.changelog_topics``), and their
drift — a tombstone retention under the declared day is unsafe — reported before a worker
starts on them, not only in its log once it has.

Idempotent: existing topics are never changed; a drifted config is reported (exit 2) so an
operator decides. Exit 0 when everything matches the declaration in ``common.kafka``, or
with ``--drift-ok`` (compose's one-shot ``topics`` service: drift is reported in its log but
does not keep the pipeline from starting). Exit 3, ``--drift-ok`` or not, when a drift breaks
a guarantee (``common.kafka._unsafe``: another cleanup policy, a retention under Salesforce's
72 hours, a size limit, fewer replicas or a lower ``min.insync.replicas`` than declared):
``make up`` and
compose's pipeline services do not start. Exit 1 when Kafka is unreachable or refuses.

The broker is the one ``make up`` runs (:func:`kafka_settings`) unless
``KAFKA_BOOTSTRAP_SERVERS`` names another.
"""

from __future__ import annotations

import argparse
import sys

from common.envparse import environment, exits_64_on_config_error
from common.errors import PipelineError
from common.kafka import changelog_topics, declared_topics, ensure_topics
from common.settings import KafkaSettings, WorkerSettings
from ops.kafka_local import local_bootstrap
from ops.stack import recorded_env


def kafka_settings() -> KafkaSettings:
    """The pipeline's Kafka settings; without ``KAFKA_BOOTSTRAP_SERVERS``, the address the
    running stack recorded (``KAFKA_PORT`` given to ``make up`` alone), else the local
    broker's on ``KAFKA_PORT``."""
    env = environment()
    given = {k: v for k, v in env.items() if v.strip()}  # a blank line is unset, as always
    return KafkaSettings.load(env, bootstrap_servers=local_bootstrap({**recorded_env(), **given}))


@exits_64_on_config_error
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops.topics",
                                     description="Create missing topics; report drift.")
    parser.add_argument("--drift-ok", action="store_true",
                        help="report drift but exit 0 (it does not block a start)")
    args = parser.parse_args(argv)
    try:
        settings = kafka_settings()
        app_id = WorkerSettings.load(environment()).app_id
        changelogs = changelog_topics(settings, settings.topic(app_id))
        report = ensure_topics(settings, extra=changelogs)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for spec in [*declared_topics(settings), *changelogs]:
        state = "created" if spec.name in report.created else "exists"
        partitions = report.partitions.get(spec.name, spec.partitions)
        print(f"  {spec.name:<45} {partitions:>2} partitions  {state:<8} {spec.purpose}")
    print(f"  (the worker's changelogs of WORKER_APP_ID={app_id}: set it as the workers have "
          "it)")
    for line in report.drift:
        print(f"  drift: {line}")
    if report.unsafe:
        # whatever --drift-ok says: a start on such a topic loses what the pipeline promises
        print(f"error: {len(report.unsafe)} topic drift(s) break a guarantee (unsafe, above): "
              "fix the topic (kafka-configs --alter), or declare what it is meant to be "
              "(KAFKA_MIN_INSYNC_REPLICAS, KAFKA_REPLICATION_FACTOR)", file=sys.stderr)
        return 3
    return 0 if report.ok or args.drift_ok else 2


if __name__ == "__main__":
    sys.exit(main())
