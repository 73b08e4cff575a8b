"""The worker's faust app: the recovery order, an idempotent producer, ``read_committed``
(docs/decisions/0002)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import faust
from aiokafka import AIOKafkaConsumer
from faust.transport.base import Transport as FaustTransport
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.transport.drivers.aiokafka import Producer as AIOKafkaDriverProducer

from streams.faust_seam._base import CONTRACT
from streams.faust_seam.fetcher import refresh_metadata_on_stale_offsets


class IdempotentProducer(AIOKafkaDriverProducer):
    """faust's aiokafka producer with ``enable_idempotence``: faust asks for it only in its
    exactly-once mode, and ``acks=-1`` alone lets a send retried after a leader failover
    write a record twice (an outcome, or a changelog entry of the tables)."""

    def _settings_extra(self) -> Mapping[str, Any]:
        return {**super()._settings_extra(), "acks": "all", "enable_idempotence": True}


# mode names a service's logger after its class's module; keep faust's (quietened by
# common.log), or every start, stop and topic declaration lands in the worker's log at INFO.
IdempotentProducer.logger = AIOKafkaDriverProducer.logger


def build_app(app_id: str, **settings: Any) -> faust.App:
    """The worker's faust app: :class:`TableManager` (the recovery order), an idempotent
    producer, its consumer reading ``read_committed`` (docs/decisions/0002), and offsets
    asked of a partition's old leader asked again with fresh metadata (decision 0015)."""
    refresh_metadata_on_stale_offsets()
    # env={}: faust reads every one of its settings from os.environ over what is passed
    # (STREAM_WAIT_EMPTY=false turned the revoke and SIGTERM drain off, BROKER_URL moved
    # its clients to another cluster): the worker is configured by its own settings only
    app = faust.App(app_id, TableManager="streams.faust_seam.recovery:TableManager", env={},
                    **settings)
    if not app.conf.stream_wait_empty:  # the revoke and the stop wait empty (consumer.py)
        raise ValueError("stream_wait_empty must stay on: the worker's revoke and SIGTERM "
                         "drain run in faust's wait_empty")
    cast(Any, app.transport).Producer = IdempotentProducer  # before the producer exists
    thread = cast(Any, app.consumer)._thread
    original = thread._create_worker_consumer

    def create(transport: Any) -> Any:
        client = original(transport)
        client._isolation_level = "read_committed"  # read by AIOKafkaConsumer.start()
        return client

    thread._create_worker_consumer = create
    return app


CONTRACT.update({
    "S faust aiokafka Producer._settings_extra": (
        AIOKafkaDriverProducer, "_settings_extra", "a4c7bc41b63822236e4c9be1c49437d0"),
    "R faust Transport.create_producer": (
        FaustTransport, "create_producer", "2de47ba78c944b4a74a3aadb0af9fea9"),
    # read_committed: the Fetcher is built from _isolation_level at start()
    "R aiokafka AIOKafkaConsumer.start (reads _isolation_level)": (
        AIOKafkaConsumer, "start", "2f1ba70443327538800d348e61042cde"),
    # the wrap is on the thread instance: faust must build through self._create_worker_consumer
    "R faust AIOKafkaConsumerThread._create_consumer (via self._create_worker_consumer)": (
        AIOKafkaConsumerThread, "_create_consumer", "a4dc6ba0681a298c05d60994890984fe"),
})
