"""The worker's faust producer is idempotent (streams.faust_producer), not only acks=all."""

from __future__ import annotations

import asyncio

import faust
import faust.transport.drivers.aiokafka

from streams.faust_producer import IdempotentProducer, make_idempotent


def test_the_apps_producer_is_built_idempotent_with_acks_all():
    async def build() -> tuple[object, object]:
        app = faust.App("idempotence-test", broker="kafka://127.0.0.1:1", producer_acks=-1,
                        web_enabled=False, autodiscover=False)
        make_idempotent(app)
        client = app.producer._new_producer()  # the AIOKafkaProducer, not started
        try:
            return app.producer, client
        finally:
            await client.stop()

    producer, client = asyncio.run(build())
    assert isinstance(producer, IdempotentProducer)
    assert client._txn_manager is not None  # aiokafka: set only with enable_idempotence
    assert client._sender._acks == -1
    assert IdempotentProducer.logger is faust.transport.drivers.aiokafka.Producer.logger


def test_without_it_faust_would_not_ask_for_idempotence():
    """Why the module exists; if faust starts doing it itself, the module can go."""
    async def build() -> object:
        app = faust.App("idempotence-test-2", broker="kafka://127.0.0.1:1", producer_acks=-1,
                        web_enabled=False, autodiscover=False)
        client = app.producer._new_producer()
        await client.stop()
        return client

    assert asyncio.run(build())._txn_manager is None
