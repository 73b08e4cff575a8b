"""Make faust's aiokafka producer idempotent (``acks=all`` + ``enable_idempotence``).

faust gives its producer ``enable_idempotence`` only in its exactly-once mode, which the
worker does not use (see :mod:`streams.app`); ``producer_acks=-1`` alone lets a retried
send after a leader failover write a record twice — an outcome, or a changelog entry of the
tables. With idempotence the broker drops the retry's duplicate, as it does for every other
producer of the project (connector: transactional; sink and ``sfprov``: idempotent).
faust internals used: ``Transport.Producer`` (the class ``create_producer`` builds) and
``Producer._settings_extra`` (the extra ``AIOKafkaProducer`` keyword arguments); the test
``tests/streams/test_faust_producer.py`` fails if they change.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from faust.transport.drivers import aiokafka as faust_aiokafka


class IdempotentProducer(faust_aiokafka.Producer):
    def _settings_extra(self) -> Mapping[str, Any]:
        return {**super()._settings_extra(), "acks": "all", "enable_idempotence": True}


# mode names a service's logger after its class's module; keep faust's (quietened by
# common.log), or every start, stop and topic declaration lands in the worker's log at INFO.
IdempotentProducer.logger = faust_aiokafka.Producer.logger


def make_idempotent(app: Any) -> None:
    """Before the app's producer exists: build it as an :class:`IdempotentProducer`."""
    app.transport.Producer = IdempotentProducer
