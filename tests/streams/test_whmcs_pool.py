"""The worker's WHMCS client pools at least ``WORKER_WHMCS_PARALLELISM`` connections. It was
64 whatever the setting: above that, calls the worker let go waited in the pool, their send
deadlines running out ("not sent", retried, in the end ``WHMCS_UNAVAILABLE``)."""

from __future__ import annotations

import pytest

from common.http_transport import Http11Transport
from common.settings import CommonSettings, KafkaSettings, WhmcsSettings, WorkerSettings

WHMCS = {"WHMCS_API_URL": "http://127.0.0.1:9/includes/api.php",
         "WHMCS_API_IDENTIFIER": "id", "WHMCS_API_SECRET": "secret"}


@pytest.mark.broker  # the Worker's own clients connect as it is built
@pytest.mark.parametrize("parallelism,connections", [(128, 128), (64, 64), (16, 64)])
def test_the_whmcs_pool_never_holds_calls_below_the_worker_parallelism(
        parallelism, connections, tmp_path, kafka_bootstrap):
    from streams.app import Worker

    built = Worker(kafka=KafkaSettings.load({}, bootstrap_servers=kafka_bootstrap),
                   worker=WorkerSettings.load({}, whmcs_parallelism=parallelism),
                   whmcs=WhmcsSettings.load(WHMCS),
                   sf_client=None,  # type: ignore[arg-type]
                   common=CommonSettings.load({}, state_dir=tmp_path))
    transport = built.whmcs._transport
    assert isinstance(transport, Http11Transport)
    assert transport._max_connections == connections
